"""HTTP edge: one router per protocol (IMM RPC, object upload, ops endpoints)."""
