"""Database access: URLs, engines, migrations, and the raw asyncpg pools used on hot paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class ConfigError(RuntimeError):
    """A setting that is missing or malformed; the message says which and how to fix it."""


def require_database_url(url: str | None) -> str:
    if not url:
        raise ConfigError(
            "SYMBIONT_DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/symbiont)"
        )
    return url


def sqlalchemy_url(url: str) -> str:
    """The URL with the asyncpg driver, whatever driver (if any) it names."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def asyncpg_dsn(url: str) -> str:
    """The URL as asyncpg wants it (``postgresql://``, no driver suffix)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigError(f"not a PostgreSQL URL: {parsed.render_as_string(hide_password=True)}")
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(url: str | None, *, application_name: str, **kwargs: Any) -> AsyncEngine:
    """An async SQLAlchemy engine named after its process (visible in pg_stat_activity)."""
    return create_async_engine(
        sqlalchemy_url(require_database_url(url)),
        connect_args={"server_settings": {"application_name": application_name}},
        pool_pre_ping=True,
        **kwargs,
    )


async def connect(url: str | None, *, application_name: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(
        asyncpg_dsn(require_database_url(url)),
        server_settings={"application_name": application_name},
    )
    return conn


async def create_pool(
    url: str | None, *, application_name: str, min_size: int = 1, max_size: int = 4
) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        asyncpg_dsn(require_database_url(url)),
        min_size=min_size,
        max_size=max_size,
        server_settings={"application_name": application_name},
    )
    assert pool is not None
    return pool


def split_sql(script: str) -> list[str]:
    """Split a script into statements on top-level semicolons (``$$`` bodies kept whole)."""
    statements: list[str] = []
    current: list[str] = []
    in_body = False
    script = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    for part in re.split(r"(\$\$|;)", script):
        if part == "$$":
            in_body = not in_body
            current.append(part)
        elif part == ";" and not in_body:
            text = "".join(current).strip()
            if text:
                statements.append(text)
            current = []
        else:
            current.append(part)
    tail = "".join(current).strip()
    if tail:
        statements.append(tail)
    return statements


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", require_database_url(url))
    cfg.set_main_option("file_template", "%%(year)d_%%(month).2d_%%(day).2d_%%(rev)s_%%(slug)s")
    return cfg


def upgrade(url: str | None, revision: str = "head") -> None:
    """Apply migrations (``symbiont db upgrade``). Runs its own event loop: call from sync code."""
    from alembic import command

    command.upgrade(alembic_config(require_database_url(url)), revision)


def current_revision(url: str | None) -> str | None:
    import asyncio

    async def read() -> str | None:
        conn = await connect(url, application_name="symbiont-migrate")
        try:
            exists = await conn.fetchval("SELECT to_regclass('alembic_version') IS NOT NULL")
            if not exists:
                return None
            value: str | None = await conn.fetchval("SELECT version_num FROM alembic_version")
            return value
        finally:
            await conn.close()

    return asyncio.run(read())


def downgrade(url: str | None, revision: str) -> None:
    """Revert migrations down to ``revision`` (``base``: an empty schema)."""
    from alembic import command

    command.downgrade(alembic_config(require_database_url(url)), revision)
