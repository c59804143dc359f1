"""openimm data plane: one module per job kind, plus the Celery glue."""
