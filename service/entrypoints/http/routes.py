"""The customer-groups API's group routes: reads from PostgreSQL, writes as Kafka commands
(writes.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response

from service.adapters.postgres import queries
from service.domain.errors import GroupNotFound, InvalidCommand
from service.domain.model import Group, group_json
from service.entrypoints.http import members
from service.entrypoints.http.deps import (
    GroupId,
    IdempotencyKey,
    IfMatch,
    Organization,
    checked_group_id,
    container_of,
)
from service.entrypoints.http.errors import ApiError, install_error_handlers, json_response, reading
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
from service.entrypoints.http.writes import execute, group_response, guarded, respond

# The largest millisecond timestamp a datetime holds (9999-12-31T23:59:59.999Z).
_MAX_MS = 253_402_300_799_999


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
    with reading():
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


@router.get("/{group_id}", response_model=GroupBody, responses=ERRORS)
async def get_group(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    include_deleted: bool = False,
) -> Response:
    """One group; ETag is its version."""
    with reading():
        group: Group | None = await queries.get_group(
            container_of(request).pool, organization_id, checked_group_id(group_id)
        )
    if group is None or (group.deleted_at is not None and not include_deleted):
        raise ApiError.of(GroupNotFound(group_id))
    return group_response(group_json(group), 200)


@router.post("", status_code=201, response_model=GroupBody, responses=WRITE_RESPONSES)
async def create_group(
    request: Request,
    *,
    organization_id: Organization,
    body: CreateBody,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    fields = {"type": "group.create", **body.model_dump(exclude_unset=True)}
    return respond(await execute(request, organization_id, idempotency_key, fields))


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
    return respond(await execute(request, organization_id, idempotency_key, fields))


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
    return respond(await execute(request, organization_id, idempotency_key, fields))


def _update(group_id: str, if_match: str | None) -> dict[str, Any]:
    return guarded({"type": "group.update", "group_id": checked_group_id(group_id)}, if_match)


@router.delete("/{group_id}", status_code=204, response_class=Response, responses=WRITE_RESPONSES)
async def delete_group(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    fields = guarded({"type": "group.delete", "group_id": checked_group_id(group_id)}, if_match)
    outcome = await execute(request, organization_id, idempotency_key, fields)
    return respond(outcome, success_code=204)


def install(app: FastAPI, max_body_bytes: int) -> None:
    """Mount the API; the app's lifespan puts a started ResultWaiter on app.state.results."""
    app.include_router(router)
    app.include_router(members.router)
    app.include_router(members.customers)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_error_handlers(app)
