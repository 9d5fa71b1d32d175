from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from service.config import Settings
from tests.e2e.http_support import GROUPS, ORG_A, TcpProxy, create, running_app


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(settings) as client:
        yield client


async def wait_for_status(
    client: httpx.AsyncClient, path: str, status: int, within_s: float = 30
) -> httpx.Response:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        response = await client.get(path)
        if response.status_code == status:
            return response
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path} stayed {response.status_code}: {response.text}")
        await asyncio.sleep(0.2)


async def test_liveness_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    ready = await client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "details": {"outbox_parked": 0}}


async def test_readiness_follows_postgres(settings: Settings, pool: asyncpg.Pool) -> None:
    database = urlsplit(settings.database_url.get_secret_value())
    proxy = TcpProxy(database.hostname or "127.0.0.1", database.port or 5432)
    await proxy.start()
    proxied = database._replace(
        netloc=database.netloc.rsplit("@", 1)[0] + f"@127.0.0.1:{proxy.port}"
    )
    via_proxy = settings.model_copy(update={"database_url": SecretStr(urlunsplit(proxied))})
    try:
        async with running_app(via_proxy) as client:
            await wait_for_status(client, "/health/ready", 200)

            await proxy.cut()
            down = await wait_for_status(client, "/health/ready", 503)
            assert down.json()["status"] == "unavailable"
            assert "postgres" in down.json()["problems"]
            for path in (GROUPS, f"{GROUPS}/grp_1"):
                read = await client.get(path, headers=ORG_A)
                assert read.status_code == 503, path
                assert read.json() == {
                    "code": 503,
                    "error": "Service unavailable",
                    "details": "PostgreSQL is unreachable",
                }

            await proxy.start()
            up = await wait_for_status(client, "/health/ready", 200)
            assert up.json()["status"] == "ready"
            # The pool reconnected: the API reads again.
            assert (await client.get(GROUPS, headers=ORG_A)).status_code == 200
    finally:
        await proxy.cut()


async def test_metrics_count_commands_and_show_the_outbox(client: httpx.AsyncClient) -> None:
    await create(client, "Counted")
    duplicate = await client.post(GROUPS, json={"name": "Counted"}, headers=ORG_A)
    assert duplicate.status_code == 409

    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = response.text.splitlines()
    assert (
        'customer_groups_commands_total{code="201",outcome="accepted",type="group.create"} 1.0'
        in lines
    )
    assert (
        'customer_groups_commands_total{code="409",outcome="rejected",type="group.create"} 1.0'
        in lines
    )
    for name in (
        "customer_groups_command_batch_seconds_bucket",
        "customer_groups_outbox_backlog",
        "customer_groups_outbox_oldest_age_seconds",
        "customer_groups_events_published_total",
        "customer_groups_dead_letters_total",
        "customer_groups_consumer_lag",
        "customer_groups_outbox_parked",
        "process_resident_memory_bytes",
        "python_gc_collections_total",
    ):
        assert any(line.startswith(name) for line in lines), name


async def test_http_requests_are_counted_and_timed_by_route_template(
    client: httpx.AsyncClient,
) -> None:
    for group_id in ("grp_missing1", "grp_missing2"):
        assert (await client.get(f"{GROUPS}/{group_id}", headers=ORG_A)).status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    lines = (await client.get("/metrics")).text.splitlines()
    route = f"{GROUPS}/{{group_id}}"
    counted = (
        f'customer_groups_http_requests_total{{method="GET",route="{route}",status="404"}} 2.0'
    )
    assert counted in lines
    assert any('route="unmatched"' in line for line in lines)
    assert not any("grp_missing1" in line for line in lines)
    timed = f'customer_groups_http_request_duration_seconds_count{{method="GET",route="{route}"}}'
    assert any(line.startswith(timed) for line in lines)


async def test_asyncapi_documents_the_kafka_contract(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    response = await client.get("/docs/asyncapi.json")

    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"].startswith("3.")
    schemas = document["components"]["schemas"]
    for name in ("CreateGroup", "UpdateGroup", "DeleteGroup", "CommandResultSchema", "GroupSchema"):
        assert name in schemas, name
    assert "expected_version" in schemas["UpdateGroup"]["properties"]
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {
        settings.topic_commands,
        settings.topic_results,
        settings.topic_events,
        settings.topic_state,
        settings.topic_dlq,
    } <= addresses
    page = await client.get("/docs/asyncapi")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "AsyncApiStandalone" in page.text


async def test_openapi_documents_the_http_api(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    assert set(document["paths"][GROUPS]) == {"get", "post"}
    assert {"202", "413", "415", "503"} <= set(document["paths"][GROUPS]["post"]["responses"])
    assert set(document["paths"][GROUPS + "/{group_id}"]) == {"get", "put", "patch", "delete"}
    assert any(s["scheme"] == "bearer" for s in document["components"]["securitySchemes"].values())
    create_body = document["components"]["schemas"]["CreateBody"]
    assert create_body["required"] == ["name"]
