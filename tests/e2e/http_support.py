"""Helpers for the HTTP tests: the real app in this event loop, and a TCP proxy to cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from service.bootstrap import ALL_ROLES, Role
from service.config import Settings
from service.entrypoints.http.app import create_app
from service.tracing import Tracing
from tests.support import wait_until_assigned

# The `settings` fixture configures token-a=org_a,token-b=org_b.
ORG_A = {"Authorization": "Bearer token-a"}
ORG_B = {"Authorization": "Bearer token-b"}
GROUPS = "/api/v1/customer-groups"


@contextlib.asynccontextmanager
async def running_app(
    settings: Settings, roles: frozenset[Role] = ALL_ROLES, tracing: Tracing | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """create_app(settings) with its lifespan, consuming from real Kafka; httpx talks to it."""
    app = create_app(settings, roles, tracing=tracing)
    async with app.router.lifespan_context(app):
        await wait_until_assigned(app.state.container)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def create(client: httpx.AsyncClient, name: str, **fields: Any) -> dict[str, Any]:
    response = await client.post(GROUPS, json={"name": name, **fields}, headers=ORG_A)
    assert response.status_code == 201, response.text
    group: dict[str, Any] = response.json()["customer_group"]
    return group


def millis(timestamp: str) -> int:
    """A group's `updated_at` in whole Unix milliseconds."""
    moment = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut` drops every connection and refuses new ones."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._server = None

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self._target)
        except OSError:
            client_w.transport.abort()
            return
        self._writers.update((client_w, server_w))
        try:
            await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))
        finally:
            for writer in (client_w, server_w):
                self._writers.discard(writer)
                writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.transport.abort()
