"""The HTTP API's answers that need neither Kafka nor PostgreSQL, with stand-ins for both."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from starlette.types import Message

from service.config import Settings
from service.domain.results import CommandResult
from service.entrypoints.http.app import create_app

GROUPS = "/api/v1/customer-groups"
ORG_A = {"Authorization": "Bearer token-a"}
JSON = {**ORG_A, "Content-Type": "application/json"}
MAX_BYTES = 4096


class FakeBroker:
    """Publishes at once, or raises `error`, or (`acknowledges=False`) never returns, as
    aiokafka's send does while it waits for metadata from an unreachable Kafka."""

    def __init__(self, *, acknowledges: bool = True, error: Exception | None = None) -> None:
        self.acknowledges = acknowledges
        self.error = error
        self.published: list[bytes] = []

    async def publish(self, message: bytes, topic: str, **_: Any) -> None:
        if self.error is not None:
            raise self.error
        if not self.acknowledges:
            await asyncio.Event().wait()
        self.published.append(message)


class FakePool:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    async def fetch(self, *_: Any) -> list[Any]:
        if self.error is not None:
            raise self.error
        return []

    async def fetchrow(self, *_: Any) -> Any:
        if self.error is not None:
            raise self.error
        return None


class SilentResults:
    """A results topic on which no result ever comes."""

    @contextlib.asynccontextmanager
    async def expect(self, correlation_id: str) -> AsyncIterator[asyncio.Future[CommandResult]]:
        yield asyncio.get_running_loop().create_future()


@dataclass
class FakeContainer:
    settings: Settings
    broker: FakeBroker = field(default_factory=FakeBroker)
    pool: FakePool = field(default_factory=FakePool)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_tokens": "token-a=org_a",
        "http_command_timeout_s": 0.5,
        "command_max_bytes": MAX_BYTES,
    }
    return Settings(_env_file=None, **(values | overrides))


def app_on(container: FakeContainer) -> FastAPI:
    """The real app, its lifespan's services replaced by `container`'s stand-ins."""
    app = create_app(container.settings)
    app.state.container = container
    app.state.results = SilentResults()
    return app


@contextlib.asynccontextmanager
async def client_of(container: FakeContainer) -> AsyncIterator[httpx.AsyncClient]:
    # A 500 is an answer to check here, not an error to raise into the test.
    transport = httpx.ASGITransport(app=app_on(container), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        yield client


def error(code: int, message: str, details: object = None) -> dict[str, object]:
    return {"code": code, "error": message, "details": details}


@pytest.mark.parametrize(
    "broker",
    [FakeBroker(acknowledges=False), FakeBroker(error=KafkaConnectionError())],
    ids=["never acknowledged", "refused"],
)
async def test_a_command_kafka_did_not_acknowledge_is_503_not_queued(broker: FakeBroker) -> None:
    container = FakeContainer(settings(), broker=broker)
    async with client_of(container) as client:
        response = await client.post(GROUPS, json={"name": "VIP"}, headers=ORG_A)

    assert response.status_code == 503
    assert response.json() == error(503, "Service unavailable", "Kafka is unreachable")
    assert broker.published == []


async def test_an_acknowledged_command_without_a_result_in_time_is_202_queued() -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.post(
            GROUPS, json={"name": "VIP"}, headers={**ORG_A, "Idempotency-Key": "vip-1"}
        )

    assert response.status_code == 202
    assert response.json() == {"command_id": "vip-1"}
    assert len(container.broker.published) == 1


async def test_the_frameworks_own_errors_have_the_linkit_shape() -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        unknown = await client.get("/api/v1/nothing-here", headers=ORG_A)
        wrong_method = await client.delete(GROUPS, headers=ORG_A)
        not_utf8 = await client.post(GROUPS, content=b'{"name": "\xff"}', headers=JSON)
        too_deep = await client.post(GROUPS, content=b"[" * 4000, headers=JSON)
        no_token = await client.get(GROUPS)

    assert unknown.status_code == 404
    assert unknown.json() == error(404, "Not Found")
    assert wrong_method.status_code == 405
    assert wrong_method.json() == error(405, "Method Not Allowed")
    assert "allow" in wrong_method.headers
    for unreadable in (not_utf8, too_deep):
        assert unreadable.status_code == 400
        assert unreadable.json() == error(400, "Bad Request", "There was an error parsing the body")
    assert no_token.status_code == 401
    assert no_token.headers["www-authenticate"] == "Bearer"
    assert container.broker.published == []


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connection refused"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    ],
    ids=type,
)
async def test_reads_while_postgres_is_unreachable_are_503(failure: Exception) -> None:
    container = FakeContainer(settings(), pool=FakePool(failure))
    async with client_of(container) as client:
        listed = await client.get(GROUPS, headers=ORG_A)
        fetched = await client.get(f"{GROUPS}/grp_1", headers=ORG_A)

    for response in (listed, fetched):
        assert response.status_code == 503
        assert response.json() == error(503, "Service unavailable", "PostgreSQL is unreachable")


async def test_any_other_failure_is_a_500_in_the_linkit_shape() -> None:
    container = FakeContainer(settings(), pool=FakePool(asyncpg.UndefinedTableError("no table")))
    async with client_of(container) as client:
        response = await client.get(GROUPS, headers=ORG_A)

    assert response.status_code == 500
    assert response.json() == error(500, "Internal server error")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_a_json_body_sent_as_another_content_type_is_415(content_type: str) -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.post(
            GROUPS, content=b'{"name": "VIP"}', headers={**ORG_A, "Content-Type": content_type}
        )

    assert response.status_code == 415
    assert response.json() == error(
        415, "Unsupported media type", "Content-Type must be application/json"
    )
    assert container.broker.published == []


async def test_a_json_subtype_is_json() -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.patch(
            f"{GROUPS}/grp_1",
            content=b'{"name": "VIP"}',
            headers={**ORG_A, "Content-Type": "application/merge-patch+json"},
        )

    assert response.status_code == 202, response.text


TOO_LARGE = error(413, "Request body too large", f"The body must be at most {MAX_BYTES} bytes")


def counted_chunks(count: int, size: int) -> tuple[AsyncIterator[bytes], Callable[[], int]]:
    """A body of `count` chunks of `size` bytes, and how many of them were read so far."""
    read = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal read
        for _ in range(count):
            read += 1
            yield b" " * size

    return chunks(), lambda: read


async def test_a_body_over_the_limit_by_its_content_length_is_413_and_not_read() -> None:
    body, chunks_read = counted_chunks(100, 1024)
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.post(
            GROUPS, content=body, headers={**JSON, "Content-Length": str(100 * 1024)}
        )

    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert chunks_read() == 0


async def test_a_chunked_body_is_read_only_up_to_the_limit() -> None:
    body, chunks_read = counted_chunks(100, 1024)
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.post(GROUPS, content=body, headers=JSON)

    assert response.status_code == 413
    assert response.json() == TOO_LARGE
    assert chunks_read() == MAX_BYTES // 1024 + 1
    assert container.broker.published == []


async def test_a_body_of_exactly_the_limit_is_taken() -> None:
    fields = b'{"name": "VIP"}'
    container = FakeContainer(settings())
    async with client_of(container) as client:
        at_limit = await client.post(
            GROUPS, content=fields + b" " * (MAX_BYTES - len(fields)), headers=JSON
        )
        over = await client.post(
            GROUPS, content=fields + b" " * (MAX_BYTES + 1 - len(fields)), headers=JSON
        )

    assert at_limit.status_code == 202, at_limit.text
    assert over.status_code == 413
    assert over.json() == TOO_LARGE


async def test_http_enabled_false_serves_no_api_but_still_health() -> None:
    async with client_of(FakeContainer(settings())) as client:
        assert (await client.get(GROUPS, headers=ORG_A)).status_code == 200
    async with client_of(FakeContainer(settings(http_enabled=False))) as client:
        assert (await client.get(GROUPS, headers=ORG_A)).status_code == 404
        assert (await client.get("/health/live")).status_code == 200


NOT_UNICODE = "Input should be valid Unicode text, without lone surrogates"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH"])
@pytest.mark.parametrize("field", ["name", "description", "platform_id"])
@pytest.mark.parametrize("text", ["\ud800", "VIP \udfff"])
async def test_a_lone_surrogate_in_a_body_field_is_422_not_500(
    method: str, field: str, text: str
) -> None:
    # json.dumps escapes it as "\ud800": valid JSON, whose text no encoder takes.
    body = json.dumps({"name": "VIP", field: text}).encode()
    path = GROUPS if method == "POST" else f"{GROUPS}/grp_1"
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.request(method, path, content=body, headers=JSON)

    assert response.status_code == 422, response.text
    assert response.json() == error(422, "Validation error", f"{field}: {NOT_UNICODE}")
    assert container.broker.published == []


async def test_a_lone_surrogate_in_a_field_name_is_422() -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.post(GROUPS, content=b'{"na\\ud800me": "VIP"}', headers=JSON)

    assert response.status_code == 422, response.text
    assert response.json() == error(
        422, "Validation error", "Field names must be valid Unicode text, without lone surrogates"
    )


async def test_a_surrogate_pair_is_one_character_and_taken() -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.post(GROUPS, content=b'{"name": "\\ud83d\\ude00"}', headers=JSON)

    assert response.status_code == 202, response.text
    assert json.loads(container.broker.published[0])["name"] == "\N{GRINNING FACE}"


async def asgi_request(
    app: FastAPI, method: str, path: str, body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    """A request straight to the app, with a path httpx cannot put in a URL."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(errors="surrogatepass"),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in JSON.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("api", 80),
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    answer: dict[str, Any] = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    return sent[0]["status"], answer


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
async def test_a_lone_surrogate_in_the_path_is_422_not_500(method: str) -> None:
    # Servers decode a URL's %-escapes as UTF-8 with U+FFFD for what is not, so none sends
    # this today; the API does not count on it.
    container = FakeContainer(settings())
    body = b'{"name": "VIP"}' if method in ("PUT", "PATCH") else b""
    status, answer = await asgi_request(app_on(container), method, f"{GROUPS}/grp_\ud800", body)

    assert status == 422
    assert answer == error(422, "Validation error", f"group_id: {NOT_UNICODE}")
    assert container.broker.published == []
