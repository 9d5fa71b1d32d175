"""The customer-groups API: reads from PostgreSQL, writes as Kafka commands.

A write is published on the commands topic like any producer's, and the service's result
is awaited on the results topic, so the API has the Kafka contract's idempotency,
ordering and events, and nothing but the consumer ever writes a group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, FastAPI, Query, Request, Response

from service.adapters.kafka.result_waiter import ResultWaiter
from service.adapters.postgres import queries
from service.config import Settings
from service.domain.commands import (
    valid_command_id,
)
from service.domain.errors import GroupNotFound, InvalidCommand
from service.domain.model import Group, group_json
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.entrypoints.http.deps import (
    GroupId,
    IdempotencyKey,
    IfMatch,
    Organization,
    checked_group_id,
    container_of,
    expected_version,
)
from service.entrypoints.http.errors import ApiError, install_error_handlers, json_response
from service.entrypoints.http.middleware import BodyLimit
from service.entrypoints.http.schemas import (
    ERRORS,
    PREFIX,
    WRITE_RESPONSES,
    CreateBody,
    GroupBody,
    GroupList,
    PatchBody,
    ReplaceBody,
    Text,
)
from service.parsing import Invalid, parse_command
from service.retry import is_transient

log = logging.getLogger(__name__)


# The largest millisecond timestamp a datetime holds (9999-12-31T23:59:59.999Z).
_MAX_MS = 253_402_300_799_999


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def _group_response(group: dict[str, Any], status_code: int) -> Response:
    return json_response({"customer_group": group}, status_code, _etag(group["version"]))


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
    container = container_of(request)
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
        return json_response({"command_id": outcome}, 202)
    if outcome.status == "rejected" or outcome.group is None:
        body = {"code": outcome.code, "error": outcome.error, "details": outcome.details}
        return json_response(body, outcome.code)
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
            container_of(request).pool,
            organization_id,
            limit=limit,
            offset=(page - 1) * limit,
            after=after,
            filters=filters,
        )
    next_cursor = None if result.next is None else queries.Cursor(result.next, filters)
    return json_response(
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
            container_of(request).pool, organization_id, checked_group_id(group_id)
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
    fields: dict[str, Any] = {"type": "group.update", "group_id": checked_group_id(group_id)}
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
    fields: dict[str, Any] = {"type": "group.delete", "group_id": checked_group_id(group_id)}
    if (version := expected_version(if_match)) is not None:
        fields["expected_version"] = version
    outcome = await _execute(request, organization_id, idempotency_key, fields)
    return _respond(outcome, success_code=204)


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Mount the API; the app's lifespan puts a started ResultWaiter on app.state.results."""
    app.include_router(router)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
