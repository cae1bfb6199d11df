"""Reference PSA domain: tables and service functions ("server actions") for every catalog module.

Each action validates its input, changes state and records its events with ``outbox.record`` in the
caller's transaction; bad input raises a ``DomainError`` before anything is written or emitted.
This package is a reference for host applications and the source of the end-to-end event tests.
"""
