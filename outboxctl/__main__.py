"""``python -m outboxctl``."""

from outbox.cli.main import main

raise SystemExit(main())
