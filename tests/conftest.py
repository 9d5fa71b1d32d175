"""Endpoints for the tests that need real services.

Order of preference: DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS from the environment (what
`make test` provides), else testcontainers when a Docker engine answers, else: under
CI=true the test fails with how to start the services; elsewhere it is skipped.

Every session gets its own database and its own topic names, so a session never sees
what an earlier one (or a `make run` on the same machine) left behind."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from service.adapters.kafka.clients import client_options
from service.adapters.kafka.topics import ensure_topics
from service.adapters.postgres.db import create_pool, migrate
from service.bootstrap import Container, lifespan
from service.config import Settings
from tests.kafka_node import KafkaNode, missing_requirements
from tests.support import KafkaProbe, wait_until_assigned

SERVICE_FOLDER = str(resources.files("service")) + os.sep

HOW_TO_START = (
    "PostgreSQL and Kafka are needed. Run the suite with `make test` (it installs and starts "
    "both), or start them with `make services` and export the variables it prints, or set "
    "DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS to existing ones."
)


def _unavailable(what: str) -> None:
    message = f"{what} is not reachable. {HOW_TO_START}"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def endpoints() -> Iterator[tuple[str, str]]:
    """(database_url, kafka_bootstrap_servers) of running services."""
    database_url = os.environ.get("DATABASE_URL")
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    with ExitStack() as stack:
        if not (database_url and kafka) and _docker_answers():
            from testcontainers.kafka import KafkaContainer
            from testcontainers.postgres import PostgresContainer

            if not database_url:
                pg = stack.enter_context(PostgresContainer("postgres:16", driver=None))
                database_url = pg.get_connection_url()
            if not kafka:
                container = stack.enter_context(KafkaContainer().with_kraft())
                kafka = container.get_bootstrap_server()
        if not database_url:
            _unavailable("PostgreSQL (DATABASE_URL unset)")
        if not kafka:
            _unavailable("Kafka (KAFKA_BOOTSTRAP_SERVERS unset)")
        assert database_url and kafka
        parts = urlsplit(database_url)
        if not _reachable(parts.hostname or "127.0.0.1", parts.port or 5432):
            _unavailable(f"PostgreSQL at {parts.hostname}:{parts.port}")
        host, _, port = kafka.split(",")[0].rpartition(":")
        if not _reachable(host, int(port)):
            _unavailable(f"Kafka at {kafka}")
        yield database_url, kafka


@pytest.fixture(scope="session")
async def test_database(endpoints: tuple[str, str]) -> AsyncIterator[str]:
    """A fresh database for this session, dropped at its end."""
    admin_url, _ = endpoints
    name = f"cg_test_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def make_settings(database_url: str, kafka: str, prefix: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": database_url,
        "kafka_bootstrap_servers": kafka,
        "topic_partitions_commands": 3,
        "topic_partitions_events": 3,
        "topic_partitions_results": 3,
        "http_port": 0,
        "api_tokens": "token-a=org_a,token-b=org_b",
        "relay_poll_max_s": 0.05,
        # A standby that takes over from a killed leader waits this long before it publishes.
        "relay_delivery_timeout_s": 2.0,
    }
    values.update(overrides)
    return Settings.model_validate(values).namespaced(prefix)


@pytest.fixture
async def settings(endpoints: tuple[str, str], test_database: str) -> AsyncIterator[Settings]:
    """Settings with topics of their own (per test), on this session's database.

    The topics are deleted afterwards: a single local broker slows down and runs out of
    heap when thousands of test partitions pile up."""
    _, kafka = endpoints
    prefix = f"t{uuid.uuid4().hex[:8]}"
    value = make_settings(test_database, kafka, prefix)
    await ensure_topics(value)
    yield value
    admin = AIOKafkaAdminClient(**client_options(value))
    await admin.start()
    try:
        existing = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        if existing:
            await admin.delete_topics(existing)
    finally:
        await admin.close()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a migrated, emptied database."""
    pool = await create_pool(settings, min_size=1)
    await migrate(pool)
    await pool.execute(
        "TRUNCATE customer_groups, outbox, processed_commands, group_members, member_purges"
    )
    # A relay an earlier test stopped mid-publish would make the next leader wait it out.
    await pool.execute("UPDATE relay_leader SET released = true")
    yield pool
    await pool.close()


@pytest.fixture(autouse=True)
async def no_task_outlives_its_test() -> AsyncIterator[None]:
    """Every test shares one event loop: a task of the service's that a test leaves running
    (a relay, say) would go on acting on the next tests' rows. The test that leaves it fails
    instead. (Client libraries' own stragglers are theirs to answer for.)"""
    before = asyncio.all_tasks()
    yield
    left = {t for t in asyncio.all_tasks() - before if _runs_service_code(t)}
    if left:
        # Closing clients lets some of their tasks finish a moment later.
        _, running = await asyncio.wait(left, timeout=5)
        for task in running:
            task.cancel()
        assert not running, f"tasks left running: {sorted(t.get_name() for t in running)}"


def _runs_service_code(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename.startswith(SERVICE_FOLDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Each test is marked by its folder, so `-m unit` (or integration, e2e) selects it."""
    for item in items:
        for kind in ("unit", "integration", "e2e"):
            if f"{os.sep}{kind}{os.sep}" in str(item.path):
                item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture
async def service(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Container]:
    """The whole service (consumer, relay) running in this event loop on real Kafka/Postgres."""
    async with lifespan(settings) as container:
        await wait_until_assigned(container)
        yield container


@pytest.fixture
async def kafka(settings: Settings) -> AsyncIterator[KafkaProbe]:
    probe = KafkaProbe(settings)
    await probe.start()
    yield probe
    await probe.stop()


@pytest.fixture
async def private_kafka(tmp_path: Path) -> AsyncIterator[KafkaNode]:
    """A broker of this test's own, with no topic at all: the shared one stays up for
    everyone else."""
    reason = missing_requirements()
    if reason is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"a private Kafka node is needed: {reason}", pytrace=False)
        pytest.skip(f"a private Kafka node is needed: {reason}")
    node = KafkaNode(tmp_path / "kafka")
    node.start()
    try:
        await node.wait_ready()
        yield node
    finally:
        node.kill()
