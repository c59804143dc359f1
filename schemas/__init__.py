"""openimm wire contract: pydantic models of IMM requests, responses and events."""
