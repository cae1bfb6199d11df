"""Run the outbox migrations standalone, or point a host application's Alembic at them."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, pool

from outbox import migrations
from outbox.settings import sqlalchemy_url


def alembic_config(database_url: str) -> Config:
    """An Alembic ``Config`` for the outbox migrations against ``database_url``."""
    cfg = Config()
    cfg.set_main_option("script_location", migrations.SCRIPT_LOCATION)
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Apply the outbox migrations up to ``revision``. Idempotent."""
    cfg = alembic_config(database_url)
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    engine.dispose()


def sql(revision: str = "heads") -> None:
    """Print the migration SQL (offline mode) for DBAs who apply DDL themselves."""
    cfg = alembic_config("postgresql://")
    command.upgrade(cfg, revision, sql=True)
