"""Alembic environment: migrates the database named by the config (set by idcscan.core.migrate),
or, run as `alembic` from the repository's root to write a revision, the database of the
settings (IDCSCAN_DATABASE_URL, else the embedded SQLite)."""

from __future__ import annotations

from alembic import context

from idcscan.core.db import Base, make_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    from idcscan.core.settings import get_settings

    return config.get_main_option("sqlalchemy.url") or get_settings().database


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
