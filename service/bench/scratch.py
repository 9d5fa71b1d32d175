"""The database and topics a bench run makes for itself on the servers it is given, gone
at its end unless it is asked to keep them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from pydantic import SecretStr

from service.bench import kafka_io
from service.bench.context import Progress
from service.config import Settings


def bench_settings(settings: Settings, prefix: str, database_url: str) -> Settings:
    return settings.namespaced(prefix).model_copy(update={"database_url": SecretStr(database_url)})


@contextlib.asynccontextmanager
async def scratch_database(admin_url: str, name: str, keep: bool) -> AsyncIterator[str]:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))
    finally:
        if not keep:
            await _drop_database(admin_url, name)


async def _drop_database(admin_url: str, name: str, attempts: int = 30) -> None:
    """FORCE cannot end an autovacuum worker (it is not our role's); it is soon done."""
    conn = await asyncpg.connect(admin_url)
    try:
        for attempt in range(attempts):
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                return
            except (asyncpg.InsufficientPrivilegeError, asyncpg.ObjectInUseError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(1)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def scratch_topics(
    settings: Settings, keep: bool, progress: Progress
) -> AsyncIterator[list[str]]:
    """The list to add each topic made to; they are deleted at the end unless `keep`."""
    created: list[str] = []
    try:
        yield created
    finally:
        if created and not keep:
            try:
                await kafka_io.delete_topics(settings, created)
            except Exception as error:  # a cleanup failure must not hide the run's own
                progress(f"could not delete topics {', '.join(created)}: {error!r}")
