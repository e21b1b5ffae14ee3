"""Driving Alembic from the application: upgrade, downgrade, and "is the database behind?"."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine


def alembic_config(migrations_dir: Path, database_url: str) -> Config:
    config = Config(str(migrations_dir.parent / "alembic.ini"))
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["database_url"] = database_url
    config.attributes["skip_logging_config"] = True
    return config


def upgrade(migrations_dir: Path, database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(migrations_dir, database_url), revision)


def downgrade(migrations_dir: Path, database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(migrations_dir, database_url), revision)


def head_revision(migrations_dir: Path) -> str | None:
    script = ScriptDirectory(str(migrations_dir))
    return script.get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    async with engine.connect() as connection:
        try:
            result = await connection.execute(text("SELECT version_num FROM alembic_version"))
        except ProgrammingError:
            return None
        return result.scalar_one_or_none()
