"""Alembic environment for running the outbox migrations standalone (``outbox migrate``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from outbox.migrations import VERSION_TABLE

config = context.config
url = config.get_main_option("sqlalchemy.url")


def run_offline() -> None:
    context.configure(url=url, literal_binds=True, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url or "postgresql+psycopg://", poolclass=pool.NullPool)
    with engine.connect() as conn:
        context.configure(connection=conn, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
