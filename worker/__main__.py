"""``python -m outbox.worker``: run the workflow worker with settings from the environment."""

from __future__ import annotations

from outbox.worker.cli import main

raise SystemExit(main())
