"""The ``outbox`` command line (migrate, relay, status, dead-letters, replay, demo)."""
