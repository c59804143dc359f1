"""Alembic migrations (revisions named by date). Run with ``openimm migrate``."""
