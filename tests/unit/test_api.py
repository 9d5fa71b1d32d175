"""The HTTP API's answers that need neither Kafka nor PostgreSQL, with stand-ins for both."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from starlette.types import Message

from service.adapters.oidc import OidcVerifier
from service.config import Settings
from service.domain.results import CommandResult
from service.entrypoints.http.app import create_app
from service.observability import Metrics
from service.tracing import Tracing

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
        self.headers: list[dict[str, str]] = []

    async def publish(self, message: bytes, topic: str, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        if not self.acknowledges:
            await asyncio.Event().wait()
        self.published.append(message)
        self.headers.append(dict(options.get("headers") or {}))


class FakePool:
    """A database with no rows; `queries` holds each statement's parameters."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.queries: list[tuple[Any, ...]] = []

    def _query(self, parameters: tuple[Any, ...]) -> None:
        self.queries.append(parameters)
        if self.error is not None:
            raise self.error

    async def fetch(self, _: str, *parameters: Any) -> list[Any]:
        self._query(parameters)
        return []

    async def fetchrow(self, _: str, *parameters: Any) -> Any:
        self._query(parameters)
        return None

    async def fetchval(self, _: str, *parameters: Any) -> Any:
        self._query(parameters)
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
    metrics: Metrics = field(default_factory=Metrics)
    tracing: Tracing = field(default_factory=Tracing)
    verifier: OidcVerifier | None = None


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


# Customers in groups (contract v1.1).

MEMBERS = f"{GROUPS}/grp_1/customers"
ORG_B = {"Authorization": "Bearer token-b"}


def two_organizations() -> Settings:
    return settings(api_tokens="token-a=org_a,token-b=org_b")


def customer_groups_of(customer_id: str) -> str:
    return f"/api/v1/customers/{quote(customer_id, safe='')}/customer-groups"


def cursor_of(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def published(container: FakeContainer) -> list[dict[str, Any]]:
    return [json.loads(message) for message in container.broker.published]


async def test_membership_writes_send_the_callers_commands() -> None:
    container = FakeContainer(two_organizations())
    guarded = {"Idempotency-Key": "key-1", "If-Match": '"3"'}
    async with client_of(container) as client:
        added = await client.post(
            MEMBERS, json={"customer_ids": ["cus_1", "cus_2"]}, headers={**ORG_A, **guarded}
        )
        removed = await client.post(
            f"{MEMBERS}/remove", json={"customer_ids": ["cus_1"]}, headers=ORG_B
        )
        deleted = await client.delete(
            f"{MEMBERS}/{quote('cus/1 a', safe='')}", headers={**ORG_A, "If-Match": "4"}
        )

    # No result comes from the stand-in results topic: each is queued.
    assert [r.status_code for r in (added, removed, deleted)] == [202, 202, 202]
    assert added.json() == {"command_id": "key-1"}
    first, second, third = published(container)
    assert first == {
        "command_id": "key-1",
        "organization_id": "org_a",
        "type": "group.customers.add",
        "group_id": "grp_1",
        "customer_ids": ["cus_1", "cus_2"],
        "expected_version": 3,
    }
    assert {k: v for k, v in second.items() if k != "command_id"} == {
        "organization_id": "org_b",
        "type": "group.customers.remove",
        "group_id": "grp_1",
        "customer_ids": ["cus_1"],
    }
    assert {k: v for k, v in third.items() if k != "command_id"} == {
        "organization_id": "org_a",
        "type": "group.customers.remove",
        "group_id": "grp_1",
        "customer_ids": ["cus/1 a"],
        "expected_version": 4,
    }


INVALID_CUSTOMER_BODIES = {
    b'{"customer_ids": []}': "customer_ids must hold at least one id",
    b'{"customer_ids": [" cus_1"]}': "customer_ids[0] must not start or end with whitespace",
    b'{"customer_ids": ["cus_1", "cus_2\\t"]}': (
        "customer_ids[1] must not start or end with whitespace"
    ),
    b'{"customer_ids": ["cus\\u0007_1"]}': "customer_ids[0] must not contain control characters",
    b'{"customer_ids": ["cus\\u0000_1"]}': "customer_ids[0] must not contain control characters",
    b'{"customer_ids": [""]}': "customer_ids[0] must be 1-128 characters",
    b'{"customer_ids": ["' + b"c" * 129 + b'"]}': "customer_ids[0] must be 1-128 characters",
    b'{"customer_ids": "cus_1"}': "customer_ids: Input should be a valid list",
    b'{"customer_ids": null}': "customer_ids: Input should be a valid list",
    b'{"customer_ids": [1]}': "customer_ids.0: Input should be a valid string",
    b'{"customer_ids": ["cus_1"], "group_id": "grp_2"}': (
        "group_id: Extra inputs are not permitted"
    ),
    b"{}": "customer_ids: Field required",
    b"[]": "The body must be a JSON object",
    b'{"customer_ids": ["\\ud800"]}': f"customer_ids.0: {NOT_UNICODE}",
    b'{"customer_ids": ["' + b'c", "' * 1000 + b'c"]}': "customer_ids must hold at most 1000 ids",
}


@pytest.mark.parametrize("path", [MEMBERS, f"{MEMBERS}/remove"], ids=["add", "remove"])
@pytest.mark.parametrize(
    ("body", "details"), INVALID_CUSTOMER_BODIES.items(), ids=range(len(INVALID_CUSTOMER_BODIES))
)
async def test_an_invalid_customer_ids_body_is_422_and_sends_nothing(
    path: str, body: bytes, details: str
) -> None:
    container = FakeContainer(settings(command_max_bytes=64 * 1024))
    async with client_of(container) as client:
        response = await client.post(path, content=body, headers=JSON)

    assert response.status_code == 422, response.text
    assert response.json() == error(422, "Validation error", details)
    assert container.broker.published == []


async def test_a_thousand_customer_ids_are_taken() -> None:
    container = FakeContainer(settings(command_max_bytes=64 * 1024))
    ids = [f"cus_{i}" for i in range(1000)]
    async with client_of(container) as client:
        response = await client.post(MEMBERS, json={"customer_ids": ids}, headers=ORG_A)

    assert response.status_code == 202, response.text
    assert published(container)[0]["customer_ids"] == ids


BAD_CUSTOMER_IDS = {
    " cus_1": "customer_id must not start or end with whitespace",
    "cus_1\N{NO-BREAK SPACE}": "customer_id must not start or end with whitespace",
    "cus\x07_1": "customer_id must not contain control characters",
    "cus\x00_1": "customer_id must not contain control characters",
    "cus\x85_1": "customer_id must not contain control characters",
    "c" * 129: "customer_id must be 1-128 characters",
    "": "customer_id must be 1-128 characters",
}


@pytest.mark.parametrize(
    ("customer_id", "details"), BAD_CUSTOMER_IDS.items(), ids=range(len(BAD_CUSTOMER_IDS))
)
async def test_a_customer_id_in_the_path_obeys_the_rules_of_commands(
    customer_id: str, details: str
) -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        groups = await client.get(customer_groups_of(customer_id), headers=ORG_A)
        deleted = await client.delete(f"{MEMBERS}/{quote(customer_id, safe='')}", headers=ORG_A)
        # The same id in a command's body is refused by the command's own rules.
        in_body = await client.post(MEMBERS, json={"customer_ids": [customer_id]}, headers=ORG_A)

    for response in (groups, deleted):
        assert response.status_code == 422, response.text
        assert response.json() == error(422, "Validation error", details)
    assert in_body.status_code == 422, in_body.text
    assert container.pool.queries == []
    assert container.broker.published == []


async def test_a_customer_id_of_128_characters_with_inner_spaces_is_taken() -> None:
    customer_id = "a b/" + "c" * 124
    container = FakeContainer(settings())
    async with client_of(container) as client:
        groups = await client.get(customer_groups_of(customer_id), headers=ORG_A)

    assert groups.status_code == 200, groups.text
    assert groups.json() == {"customer_groups": [], "next_cursor": None}
    assert container.pool.queries == [("org_a", customer_id, None, 51)]


async def test_reads_are_scoped_to_the_callers_organization() -> None:
    container = FakeContainer(two_organizations())
    async with client_of(container) as client:
        as_a = await client.get(MEMBERS, headers=ORG_A)
        as_b = await client.get(MEMBERS, params={"limit": 1000}, headers=ORG_B)
        groups = await client.get(customer_groups_of("cus_1"), params={"limit": 7}, headers=ORG_B)
        anonymous = [
            await client.get(MEMBERS),
            await client.get(customer_groups_of("cus_1")),
            await client.post(MEMBERS, json={"customer_ids": ["cus_1"]}),
            await client.delete(f"{MEMBERS}/cus_1", headers={"Authorization": "Bearer nope"}),
        ]

    # A group this organization does not have, live, is not found, whoever has it.
    for response in (as_a, as_b):
        assert response.status_code == 404
        assert response.json() == error(404, "Group not found", {"group_id": "grp_1"})
    assert groups.json() == {"customer_groups": [], "next_cursor": None}
    assert container.pool.queries == [
        ("org_a", "grp_1", None, 51),
        ("org_a", "grp_1"),
        ("org_b", "grp_1", None, 1001),
        ("org_b", "grp_1"),
        ("org_b", "cus_1", None, 8),
    ]
    for response in anonymous:
        assert response.status_code == 401
        assert response.json()["code"] == 401
    assert container.broker.published == []


async def test_a_group_id_no_group_can_have_is_404_without_asking() -> None:
    container = FakeContainer(settings())
    bad = f"{GROUPS}/not_a_group/customers"
    async with client_of(container) as client:
        responses = [
            await client.get(bad, headers=ORG_A),
            await client.post(bad, json={"customer_ids": ["cus_1"]}, headers=ORG_A),
            await client.post(f"{bad}/remove", json={"customer_ids": ["cus_1"]}, headers=ORG_A),
            await client.delete(f"{bad}/cus_1", headers=ORG_A),
        ]

    for response in responses:
        assert response.status_code == 404
        assert response.json() == error(404, "Group not found", {"group_id": "not_a_group"})
    assert container.pool.queries == []
    assert container.broker.published == []


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "many"])
async def test_a_limit_outside_1_to_1000_is_422(limit: str) -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        members = await client.get(MEMBERS, params={"limit": limit}, headers=ORG_A)
        groups = await client.get(
            customer_groups_of("cus_1"), params={"limit": limit}, headers=ORG_A
        )

    for response in (members, groups):
        assert response.status_code == 422
        assert response.json()["details"].startswith("limit: ")
    assert container.pool.queries == []


INVALID_MEMBER_CURSORS = [
    "",
    "!!!",
    "\N{LATIN SMALL LETTER E WITH ACUTE}",
    "Y",
    cursor_of(b"cus_1"),
    cursor_of(b"c:"),
    cursor_of(b"c: cus_1"),
    cursor_of(b"c:cus\x00"),
    cursor_of(b"c:cus\xff"),
    cursor_of(b"c:\xed\xa0\x80"),
    cursor_of(b"g:grp_1"),
    cursor_of(b"1732271400000000:grp_1"),
]


@pytest.mark.parametrize("cursor", INVALID_MEMBER_CURSORS)
async def test_a_members_cursor_it_did_not_make_is_422(cursor: str) -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.get(MEMBERS, params={"cursor": cursor}, headers=ORG_A)

    assert response.status_code == 422
    assert response.json() == error(422, "Validation error", "Invalid cursor")
    assert container.pool.queries == []


@pytest.mark.parametrize(
    "cursor",
    ["!!!", cursor_of(b"g:"), cursor_of(b"g:grp_\x00"), cursor_of(b"g:cus_1"), cursor_of(b"c:a")],
)
async def test_a_customer_groups_cursor_it_did_not_make_is_422(cursor: str) -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        response = await client.get(
            customer_groups_of("cus_1"), params={"cursor": cursor}, headers=ORG_A
        )

    assert response.status_code == 422
    assert response.json() == error(422, "Validation error", "Invalid cursor")
    assert container.pool.queries == []


async def test_a_cursor_continues_after_the_key_it_names() -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        await client.get(MEMBERS, params={"cursor": cursor_of(b"c:cus:7")}, headers=ORG_A)
        await client.get(
            customer_groups_of("cus_1"),
            params={"cursor": cursor_of(b"g:grp_9"), "limit": 2},
            headers=ORG_A,
        )

    assert container.pool.queries == [
        ("org_a", "grp_1", "cus:7", 51),
        ("org_a", "grp_1"),
        ("org_a", "cus_1", "grp_9", 3),
    ]


async def test_membership_reads_while_postgres_is_unreachable_are_503() -> None:
    container = FakeContainer(settings(), pool=FakePool(ConnectionRefusedError(111, "refused")))
    async with client_of(container) as client:
        members = await client.get(MEMBERS, headers=ORG_A)
        groups = await client.get(customer_groups_of("cus_1"), headers=ORG_A)

    for response in (members, groups):
        assert response.status_code == 503
        assert response.json() == error(503, "Service unavailable", "PostgreSQL is unreachable")


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", f"{GROUPS}/grp_\ud800/customers", "group_id"),
        ("POST", f"{GROUPS}/grp_\ud800/customers", "group_id"),
        ("POST", f"{GROUPS}/grp_\ud800/customers/remove", "group_id"),
        ("DELETE", f"{GROUPS}/grp_1/customers/cus_\ud800", "customer_id"),
        ("GET", "/api/v1/customers/cus_\udfff/customer-groups", "customer_id"),
    ],
)
async def test_a_lone_surrogate_in_a_membership_path_is_422(
    method: str, path: str, field: str
) -> None:
    container = FakeContainer(settings())
    body = b'{"customer_ids": ["cus_1"]}' if method == "POST" else b""
    status, answer = await asgi_request(app_on(container), method, path, body)

    assert status == 422
    assert answer == error(422, "Validation error", f"{field}: {NOT_UNICODE}")
    assert container.pool.queries == []
    assert container.broker.published == []


async def test_the_membership_routes_are_documented_with_their_errors() -> None:
    async with client_of(FakeContainer(settings())) as client:
        document = (await client.get("/openapi.json")).json()

    paths = document["paths"]
    members = f"{GROUPS}/{{group_id}}/customers"
    assert set(paths[members]) == {"get", "post"}
    assert set(paths[f"{members}/remove"]) == {"post"}
    assert set(paths[f"{members}/{{customer_id}}"]) == {"delete"}
    customer_groups = "/api/v1/customers/{customer_id}/customer-groups"
    assert set(paths[customer_groups]) == {"get"}
    writes = [paths[members]["post"], paths[f"{members}/remove"]["post"]]
    writes.append(paths[f"{members}/{{customer_id}}"]["delete"])
    for write in writes:
        assert {"202", "401", "404", "409", "413", "415", "422", "503"} <= set(write["responses"])
        parameters = {p["name"] for p in write["parameters"]}
        assert {"idempotency-key", "if-match", "group_id"} <= parameters
    assert {"200", "401", "404", "422", "503"} <= set(paths[members]["get"]["responses"])
    assert {"200", "401", "422", "503"} <= set(paths[customer_groups]["get"]["responses"])
    schemas = document["components"]["schemas"]
    error_shape = {"$ref": "#/components/schemas/ErrorBody"}
    assert paths[members]["get"]["responses"]["404"]["content"]["application/json"] == {
        "schema": error_shape
    }
    body = schemas["CustomersBody"]
    assert body["required"] == ["customer_ids"]
    assert (body["properties"]["customer_ids"]["minItems"], body["additionalProperties"]) == (
        1,
        False,
    )
    assert body["properties"]["customer_ids"]["maxItems"] == 1000
    assert set(schemas["MemberList"]["properties"]) == {"customers", "next_cursor"}
    assert set(schemas["Member"]["properties"]) == {"customer_id", "added_at"}
    assert set(schemas["CustomerGroupList"]["properties"]) == {"customer_groups", "next_cursor"}
    assert "customer_count" in schemas["GroupSchema"]["properties"]
    limit = next(p for p in paths[members]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["default"], limit["schema"]["maximum"]) == (50, 1000)


@pytest.mark.parametrize(
    ("traceparent", "copied"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", False),
        ("not a traceparent", False),
    ],
)
async def test_only_a_valid_traceparent_goes_on_the_command(traceparent: str, copied: bool) -> None:
    container = FakeContainer(settings())
    async with client_of(container) as client:
        await client.post(
            GROUPS, json={"name": "VIP"}, headers={**ORG_A, "traceparent": traceparent}
        )
    [headers] = container.broker.headers
    assert (headers.get("traceparent") == traceparent) is copied
