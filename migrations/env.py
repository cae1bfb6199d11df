"""Alembic environment of ``outbox migrate``: the outbox revisions with their own version table.

Imports only alembic and SQLAlchemy. ``outbox.migrate`` passes the version table (main option
``version_table``) and, online, an open connection (``config.attributes["connection"]``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
url = config.get_main_option("sqlalchemy.url")
version_table = config.get_main_option("version_table") or "outbox_alembic_version"


def run_offline() -> None:
    context.configure(url=url, literal_binds=True, version_table=version_table)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url or "postgresql+psycopg://", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, version_table=version_table)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
