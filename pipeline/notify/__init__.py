"""Notifications: IMM message layers, topics and subscriptions, the outbox dispatcher and its
delivery sinks (signed HTTP webhooks)."""
