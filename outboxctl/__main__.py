"""``python -m outboxctl``."""

from outboxctl.main import main

raise SystemExit(main())
