"""The customer-groups HTTP API: reads from PostgreSQL, writes as Kafka commands.

A write is published on the commands topic like any producer's, and the service's result
is awaited on the results topic, so the API has the Kafka contract's idempotency,
ordering and events, and nothing but the consumer ever writes a group."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Annotated, Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.adapters import queries
from service.adapters.kafka import client_options
from service.bootstrap import Container
from service.config import Settings
from service.domain.commands import (
    DESCRIPTION_MAX,
    GROUP_ID,
    NAME_MAX,
    PLATFORM_ID_MAX,
    valid_command_id,
)
from service.domain.errors import GroupNotFound, InvalidCommand, Rejected
from service.domain.model import Group, group_json
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.entrypoints.asyncapi import GroupSchema
from service.entrypoints.consumer import Invalid, parse_command
from service.observability import is_transient

log = logging.getLogger(__name__)

PREFIX = "/api/v1/customer-groups"
# The largest millisecond timestamp a datetime holds (9999-12-31T23:59:59.999Z).
_MAX_MS = 253_402_300_799_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VERSION_TAG = re.compile(r'(?:W/)?"?([0-9]{1,9})"?')


class ApiError(HTTPException):
    """An error response in the Linkit shape: {"code", "error", "details"}.

    An HTTPException because FastAPI turns any other exception raised while it reads the
    body (BodyLimit raises one there) into a 400 of its own."""

    def __init__(self, code: int, error: str, details: Any = None) -> None:
        super().__init__(code, error)
        self.code = code
        self.error = error
        self.details = details

    @classmethod
    def of(cls, reason: Rejected) -> ApiError:
        return cls(reason.code, reason.error, reason.details)


def _encodable(text: str) -> str:
    # JSON escapes decode to any code point, lone surrogates ("\ud800") too, and those
    # are text that nothing downstream can encode: orjson, Kafka and PostgreSQL refuse it.
    try:
        text.encode()
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "string_unicode", "Input should be valid Unicode text, without lone surrogates"
        ) from None
    return text


# Every string the API takes from a request, wherever it comes from.
Text = Annotated[str, AfterValidator(_encodable)]


class ErrorBody(BaseModel):
    code: int
    error: str
    details: Any = None


class GroupBody(BaseModel):
    customer_group: GroupSchema


class GroupList(BaseModel):
    customer_groups: list[GroupSchema]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
    page: int
    limit: int


class Accepted(BaseModel):
    command_id: str = Field(description="The command is queued; its result comes later on Kafka.")


class CreateBody(BaseModel):
    # The command's own validators judge the values (see _command); this model gives the
    # docs their schema and turns away what is not even of the right type.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"required": ["name"]})

    name: Text | None = Field(
        None,
        description=f"Trimmed; 1-{NAME_MAX} characters; unique in the organization",
        examples=["VIP Customers"],
    )
    description: Text | None = Field(None, description=f"At most {DESCRIPTION_MAX} characters")
    platform_id: Text | None = Field(
        None, description=f"At most {PLATFORM_ID_MAX} characters: the id on another platform"
    )


class ReplaceBody(CreateBody):
    """All fields: an absent description or platform_id is cleared."""


class PatchBody(CreateBody):
    """Only the fields present change; null clears description or platform_id."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=None)


def _errors(*described: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorBody, "description": text} for code, text in described}


ERRORS = _errors(
    (401, "Missing or unknown bearer token"),
    (404, "No such group in this organization"),
    (422, "Invalid parameters"),
    (503, "PostgreSQL is unreachable"),
)
WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **_errors(
        (409, "Name taken, version conflict, or Idempotency-Key reused with another body"),
        (413, "The body is larger than COMMAND_MAX_BYTES"),
        (415, "The body is not sent as application/json"),
        (422, "Invalid JSON, fields or parameters"),
        (503, "Kafka did not acknowledge the command in time: it may not be queued"),
    ),
    202: {
        "model": Accepted,
        "description": "Kafka has the command, but its result did not come within the wait",
    },
}

_bearer = HTTPBearer(auto_error=False, description="A token configured in API_TOKENS")


class BodyLimit:
    """Refuses a request body larger than `max_bytes` with 413 without reading more of it:
    by its Content-Length before reading any, or as soon as the chunks read exceed it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(
            413, "Request body too large", f"The body must be at most {self.max_bytes} bytes"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            await _error_response(self._too_large())(scope, receive, send)
            return
        received = 0

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        await self.app(scope, bounded_receive, send)


def _container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


def organization(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The token's organization; every token is compared, each in constant time."""
    if credentials is not None:
        presented = credentials.credentials.encode()
        found: str | None = None
        for token, organization_id in _container(request).settings.token_organizations.items():
            if hmac.compare_digest(presented, token.encode()):
                found = organization_id
        if found is not None:
            return found
    raise ApiError(401, "Unauthorized", "A valid bearer token is required")


Organization = Annotated[str, Depends(organization)]
GroupId = Annotated[Text, Path(description="The group's id, `grp_...`")]
IdempotencyKey = Annotated[
    Text | None,
    Header(description="Becomes the command_id: a retry with the same key gets the first result."),
]
IfMatch = Annotated[
    Text | None, Header(description='The version the group must have, as its ETag: "3"')
]


class ResultWaiter:
    """Reads the results topic while requests await results, and hands each to its request.

    Every request puts a fresh correlation_id on its command and the service echoes it on
    the result (on a replayed command's stored result too), so results find their request
    even when two requests share an Idempotency-Key. With no request waiting its partitions
    are paused: an idle API reads nothing, rather than every result of every command."""

    def __init__(self, settings: Settings) -> None:
        self._topic = settings.topic_results
        self._seek_timeout_s = settings.http_command_timeout_s
        self._consumer = AIOKafkaConsumer(
            self._topic,
            **client_options(settings),
            client_id=f"{settings.kafka_client_id}-http",
            group_id=None,
            auto_offset_reset="latest",
        )
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}
        self._resuming = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        self._consumer.pause(*self._consumer.assignment())
        self._task = asyncio.create_task(self._read(), name="http-result-waiter")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def reading(self) -> bool:
        return not self._consumer.paused()

    @contextlib.asynccontextmanager
    async def expect(self, correlation_id: str) -> AsyncIterator[asyncio.Future[CommandResult]]:
        """Await the result with this correlation_id; send its command inside this block."""
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        async with self._resuming:
            partitions = self._consumer.assignment()
            if not self._waiting and partitions:
                # From the ends as they are now: the command, sent after this, lies beyond.
                async with asyncio.timeout(self._seek_timeout_s):
                    await self._consumer.seek_to_end(*partitions)
                self._consumer.resume(*partitions)
            self._waiting[correlation_id] = future
        try:
            yield future
        finally:
            self._waiting.pop(correlation_id, None)
            if not self._waiting:
                self._consumer.pause(*self._consumer.assignment())

    async def _read(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as error:
                log.warning("reading command results failed, retrying: %r", error)
                await asyncio.sleep(1)
                continue
            for records in batches.values():
                for record in records:
                    self._deliver(record.key, record.value, record.headers)

    def _deliver(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]]
    ) -> None:
        correlation_id = next((v for k, v in headers if k == "correlation_id"), None)
        future = self._waiting.get(
            correlation_id.decode(errors="replace") if correlation_id else ""
        )
        if future is None or future.done() or not value or not key:
            return
        try:
            result = CommandResult.from_json(key.decode(), orjson.loads(value))
        except (ValueError, KeyError, TypeError) as error:
            future.set_exception(error)
        else:
            future.set_result(result)


def _json(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code, headers, media_type="application/json")


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _group_response(group: dict[str, Any], status_code: int) -> Response:
    return _json({"customer_group": group}, status_code, _etag(group["version"]))


def expected_version(if_match: str | None) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    match = _VERSION_TAG.fullmatch(if_match.strip())
    if match is None:
        raise ApiError(422, InvalidCommand.error, 'If-Match must be a group version, e.g. "3"')
    return int(match.group(1))


def _group_id(group_id: str) -> str:
    if not GROUP_ID.fullmatch(group_id):
        raise ApiError.of(GroupNotFound(group_id))
    return group_id


def _command(settings: Settings, fields: dict[str, Any]) -> AnyCommand:
    """The command a producer would send, judged by the consumer's own parser."""
    parsed = parse_command(orjson.dumps(fields), settings.command_max_bytes)
    if isinstance(parsed, Invalid):
        raise ApiError(422, InvalidCommand.error, parsed.details)
    return parsed


async def _execute(
    request: Request, organization_id: str, idempotency_key: str | None, fields: dict[str, Any]
) -> CommandResult | str:
    """Publish the command and wait for its result; on timeout, its command_id."""
    container = _container(request)
    settings = container.settings
    waiter: ResultWaiter = request.app.state.results
    if idempotency_key is not None and not valid_command_id(idempotency_key):
        raise ApiError(422, InvalidCommand.error, "Idempotency-Key must be 1-128 characters")
    command_id = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    command = _command(
        settings, {"command_id": command_id, "organization_id": organization_id, **fields}
    )
    headers = {"content-type": "application/json"}
    if traceparent := request.headers.get("traceparent"):
        headers["traceparent"] = traceparent
    correlation_id = str(uuid.uuid4())
    # One deadline for both steps, so that no write waits longer than the setting says.
    deadline = asyncio.get_running_loop().time() + settings.http_command_timeout_s
    try:
        async with waiter.expect(correlation_id) as result:
            # Until Kafka acknowledges the command it may never be queued: a timeout here
            # is a 503, never the 202 that says the command is queued.
            async with asyncio.timeout_at(deadline):
                await container.broker.publish(
                    orjson.dumps(command.model_dump(mode="json", exclude_unset=True)),
                    settings.topic_commands,
                    key=organization_id.encode(),
                    headers=headers,
                    correlation_id=correlation_id,
                )
            try:
                async with asyncio.timeout_at(deadline):
                    return await result
            except TimeoutError:
                return command.command_id
    except (KafkaError, TimeoutError) as error:
        log.warning("publishing a command failed: %r", error)
        raise ApiError(503, "Service unavailable", "Kafka is unreachable") from error


def _respond(outcome: CommandResult | str, success_code: int | None = None) -> Response:
    if isinstance(outcome, str):
        return _json({"command_id": outcome}, 202)
    if outcome.status == "rejected" or outcome.group is None:
        body = {"code": outcome.code, "error": outcome.error, "details": outcome.details}
        return _json(body, outcome.code)
    if success_code == 204:
        return Response(status_code=204, headers=_etag(outcome.group["version"]))
    response = _group_response(outcome.group, outcome.code)
    if outcome.code == 201:
        response.headers["Location"] = f"{PREFIX}/{outcome.group['id']}"
    return response


router = APIRouter(prefix=PREFIX, tags=["customer groups"])


@router.get("", response_model=GroupList, responses=ERRORS)
async def list_groups(
    request: Request,
    *,
    organization_id: Organization,
    page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[Text | None, Query(description="next_cursor of the previous page")] = None,
    updated_at_min: Annotated[
        int | None, Query(ge=0, le=_MAX_MS, description="Unix ms, inclusive")
    ] = None,
    updated_at_max: Annotated[
        int | None, Query(ge=0, le=_MAX_MS, description="Unix ms, inclusive")
    ] = None,
    include_deleted: bool | None = None,
) -> Response:
    """Groups in (updated_at, id) order, by `page` or by `cursor`. A cursor carries its
    listing's filters; parameters sent with it replace them."""
    after, carried = None, queries.Filters()
    if cursor is not None:
        if page != 1:
            raise ApiError(422, InvalidCommand.error, "Use either page or cursor, not both")
        try:
            decoded = queries.decode_cursor(cursor)
        except ValueError as error:
            raise ApiError(422, InvalidCommand.error, "Invalid cursor") from error
        after, carried = decoded.position, decoded.filters
    filters = queries.Filters(
        carried.updated_from if updated_at_min is None else _from_ms(updated_at_min),
        # Inclusive of the whole millisecond: updated_at has microseconds.
        carried.updated_to
        if updated_at_max is None
        else _from_ms(updated_at_max) + timedelta(microseconds=999),
        carried.include_deleted if include_deleted is None else include_deleted,
    )
    with _reading():
        result = await queries.list_groups(
            _container(request).pool,
            organization_id,
            limit=limit,
            offset=(page - 1) * limit,
            after=after,
            filters=filters,
        )
    next_cursor = None if result.next is None else queries.Cursor(result.next, filters)
    return _json(
        {
            "customer_groups": [group_json(g) for g in result.groups],
            "next_cursor": None if next_cursor is None else queries.encode_cursor(next_cursor),
            "page": page,
            "limit": limit,
        }
    )


def _from_ms(millis: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=millis)


@contextlib.contextmanager
def _reading() -> Iterator[None]:
    """PostgreSQL unreachable (or shedding load) is a 503 for reads, as Kafka is for writes."""
    try:
        yield
    except Exception as error:
        if not is_transient(error):
            raise
        log.warning("reading groups failed: %r", error)
        raise ApiError(503, "Service unavailable", "PostgreSQL is unreachable") from error


@router.get("/{group_id}", response_model=GroupBody, responses=ERRORS)
async def get_group(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    include_deleted: bool = False,
) -> Response:
    """One group; ETag is its version."""
    with _reading():
        group: Group | None = await queries.get_group(
            _container(request).pool, organization_id, _group_id(group_id)
        )
    if group is None or (group.deleted_at is not None and not include_deleted):
        raise ApiError.of(GroupNotFound(group_id))
    return _group_response(group_json(group), 200)


@router.post("", status_code=201, response_model=GroupBody, responses=WRITE_RESPONSES)
async def create_group(
    request: Request,
    *,
    organization_id: Organization,
    body: CreateBody,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    fields = {"type": "group.create", **body.model_dump(exclude_unset=True)}
    return _respond(await _execute(request, organization_id, idempotency_key, fields))


@router.put("/{group_id}", response_model=GroupBody, responses=WRITE_RESPONSES)
async def replace_group(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    body: ReplaceBody,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    """Full replace: description and platform_id not sent are cleared."""
    if body.name is None:
        raise ApiError(422, InvalidCommand.error, "Name is required")
    fields = _update(group_id, if_match) | body.model_dump()
    return _respond(await _execute(request, organization_id, idempotency_key, fields))


@router.patch("/{group_id}", response_model=GroupBody, responses=WRITE_RESPONSES)
async def patch_group(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    body: PatchBody,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    """Partial update: only the fields sent change."""
    fields = _update(group_id, if_match) | body.model_dump(exclude_unset=True)
    return _respond(await _execute(request, organization_id, idempotency_key, fields))


def _update(group_id: str, if_match: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": "group.update", "group_id": _group_id(group_id)}
    if (version := expected_version(if_match)) is not None:
        fields["expected_version"] = version
    return fields


@router.delete("/{group_id}", status_code=204, response_class=Response, responses=WRITE_RESPONSES)
async def delete_group(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    fields: dict[str, Any] = {"type": "group.delete", "group_id": _group_id(group_id)}
    if (version := expected_version(if_match)) is not None:
        fields["expected_version"] = version
    outcome = await _execute(request, organization_id, idempotency_key, fields)
    return _respond(outcome, success_code=204)


def _describe(problem: Any) -> str:
    if problem["type"] == "json_invalid":
        return "Invalid JSON"
    if tuple(problem["loc"]) == ("body",):
        if problem["type"] == "missing":
            return "A JSON body is required"
        if problem["type"] == "string_unicode":
            return "Field names must be valid Unicode text, without lone surrogates"
        return "The body must be a JSON object"
    where = ".".join(str(part) for part in problem["loc"][1:])
    return f"{where}: {problem['msg']}"


def _error(
    code: int, error: str, details: Any = None, headers: Mapping[str, str] | None = None
) -> Response:
    return _json({"code": code, "error": error, "details": details}, code, dict(headers or {}))


def _error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.code == 401 else None
    return _error(error.code, error.error, error.details, headers)


async def _api_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return _error_response(error)


async def _http_error(_: Request, error: Exception) -> Response:
    """Starlette's and FastAPI's own: unknown path, wrong method, unreadable body."""
    assert isinstance(error, HTTPException)
    phrase = HTTPStatus(error.status_code).phrase
    details = None if error.detail == phrase else error.detail
    return _error(error.status_code, phrase, details, error.headers)


async def _server_error(_: Request, error: Exception) -> Response:  # noqa: ARG001
    return _error(500, "Internal server error")


def _unparsed_body(problem: Any) -> bool:
    # FastAPI parses the body as JSON only when its Content-Type says JSON, and otherwise
    # validates the bytes themselves.
    return tuple(problem["loc"]) == ("body",) and isinstance(problem.get("input"), bytes)


async def _invalid_request(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    if any(_unparsed_body(p) for p in problems):
        return _error(415, "Unsupported media type", "Content-Type must be application/json")
    details = "; ".join(_describe(p) for p in problems)
    return _error(422, InvalidCommand.error, details)


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Mount the API; the app's lifespan puts a started ResultWaiter on app.state.results."""
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _server_error)
