"""The web layer: the FastAPI application (factory), who is asking (deps), the JSON API (api), the event
streams (streams) and the HTML pages (pages, launchform). It calls the domain and nothing below it."""
