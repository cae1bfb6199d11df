"""``python -m outbox.cli``: the ``outbox`` command."""

from outbox.cli.main import main

raise SystemExit(main())
