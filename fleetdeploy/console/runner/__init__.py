"""The runner layer: playbooks run through ansible-runner (manager), their live streams (live), their
processes (process), the events they emit (events, grid, writer) and the chat notifications (notify).
It knows nothing of the domain or the web."""
