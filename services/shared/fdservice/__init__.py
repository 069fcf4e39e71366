"""What the Python services (tracking, postcode) have in common, written once.

Each service image carries this package beside its own (services/shared/README.md says how it gets
there). Its modules import only what their callers already need: `logs` and `config` the standard
library alone, so a service without FastAPI or psycopg (web) can still use them.
"""
