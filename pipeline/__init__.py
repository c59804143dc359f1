"""openimm control plane: API, task service, queue routing, storage."""

__version__ = "0.1.0"
