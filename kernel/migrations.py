"""Schema migrations (Alembic): one migration history per schema, each in its own schema.

`upgrade_all(url)` applies every schema's migrations in order; `herald migrate`, `herald run` and
the test session call it. A migration directory's `env.py` is two lines that call
`run_environment()`. Concurrent upgrades are serialised with a PostgreSQL advisory lock.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import command, context
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from kernel.database import sqlalchemy_url

# schema -> the package whose `migrations/` directory holds its history; in upgrade order.
SCHEMA_PACKAGES = {
    "tenancy": "kernel",
    "ingest": "services.ingest",
    "matcher": "services.matcher",
    "executor": "services.executor",
    "tracker": "services.tracker",
}
ADVISORY_LOCK_KEY = 0x4E52414C44  # "HERALD"-ish: any fixed number shared by all migrators


def migrations_directory(schema: str) -> Path:
    spec = importlib.util.find_spec(SCHEMA_PACKAGES[schema])
    assert spec is not None and spec.submodule_search_locations is not None
    base = Path(next(iter(spec.submodule_search_locations)))
    return base / ("tenancy_migrations" if schema == "tenancy" else "migrations")


def alembic_config(database_url: str, schema: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_directory(schema)))
    config.attributes["schema"] = schema
    config.attributes["url"] = sqlalchemy_url(database_url)
    return config


def upgrade(database_url: str, schema: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url, schema), revision)


def upgrade_all(database_url: str) -> None:
    for schema in SCHEMA_PACKAGES:
        upgrade(database_url, schema)


def run_environment() -> None:
    """The body of every migrations/env.py: run this schema's migrations online."""
    config = context.config
    schema: str = config.attributes["schema"]
    engine = create_engine(config.attributes["url"], poolclass=NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        try:
            connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            connection.commit()
            context.configure(
                connection=connection,
                version_table_schema=schema,
                include_schemas=True,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()
    engine.dispose()


def create_outbox_table(schema: str) -> None:
    """Version 1 of a schema's `outbox` table (kernel.outbox), for that schema's first migration."""
    import sqlalchemy as sa
    from alembic import op

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("msg_id", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("project_id", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint("msg_id", name="uq_outbox_msg_id"),
        schema=schema,
    )
