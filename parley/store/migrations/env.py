"""Alembic environment. The URL comes from Parley's settings (or the caller's Config)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from parley.core.config import get_settings
from parley.store import search_index
from parley.store.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    return get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = engine_from_config(
        {"sqlalchemy.url": _url()}, prefix="sqlalchemy.", poolclass=pool.NullPool
    )
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_name=search_index.include_name,  # the search index is the migrations'
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Several processes may upgrade at once (a cluster's start): one migrates,
                # the others wait here and then find nothing left to do.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7261657964)")
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
