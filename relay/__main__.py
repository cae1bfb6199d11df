"""``python -m relay``: run the relay daemon with settings from the environment."""

from __future__ import annotations

from relay.cli import main

raise SystemExit(main())
