"""The customers in a group, and the groups a customer is in: reads from PostgreSQL, changes
as `group.customers.add` / `group.customers.remove` commands (writes.py)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from service.adapters.postgres import members as stored
from service.domain.commands import GROUP_ID, customer_id_problem
from service.domain.errors import GroupNotFound, InvalidCommand
from service.domain.model import format_time, group_json
from service.entrypoints.http.deps import (
    CustomerId,
    GroupId,
    IdempotencyKey,
    IfMatch,
    Organization,
    checked_customer_id,
    checked_group_id,
    container_of,
)
from service.entrypoints.http.errors import ApiError, json_response, reading
from service.entrypoints.http.schemas import (
    CUSTOMER_ERRORS,
    CUSTOMERS_PREFIX,
    ERRORS,
    MEMBER_WRITE_RESPONSES,
    PREFIX,
    CustomerGroupList,
    CustomersBody,
    GroupBody,
    MemberList,
    Text,
)
from service.entrypoints.http.writes import execute, guarded, respond

router = APIRouter(prefix=PREFIX, tags=["customers in groups"])
customers = APIRouter(prefix=CUSTOMERS_PREFIX, tags=["customers in groups"])

Limit = Annotated[int, Query(ge=1, le=1000, description="Rows on a page")]
Cursor = Annotated[Text | None, Query(description="next_cursor of the previous page")]

# A cursor names the listing it continues, so one listing's cursor is refused by another.
_MEMBERS, _GROUPS = "c", "g"


def _encode(listing: str, key: str | None) -> str | None:
    if key is None:
        return None
    return base64.urlsafe_b64encode(f"{listing}:{key}".encode()).decode().rstrip("=")


def _decode(listing: str, cursor: str | None, valid: Callable[[str], bool]) -> str | None:
    """The key a cursor continues after; 422 for anything _encode did not make."""
    if cursor is None:
        return None
    # Bad padding, text that is not ASCII and bytes that are not UTF-8 are all ValueErrors.
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except ValueError as error:
        raise ApiError(422, InvalidCommand.error, "Invalid cursor") from error
    kind, _, key = raw.partition(":")
    # The key goes to PostgreSQL as a parameter: one it refuses (a NUL) would be a 500.
    if kind != listing or not valid(key):
        raise ApiError(422, InvalidCommand.error, "Invalid cursor")
    return key


def _customer_id(key: str) -> bool:
    return customer_id_problem(key) is None


def _group_id(key: str) -> bool:
    return GROUP_ID.fullmatch(key) is not None


@router.get("/{group_id}/customers", response_model=MemberList, responses=ERRORS)
async def list_members(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """A live group's customers in customer_id order, a page at a time by `cursor`."""
    checked_group_id(group_id)
    after = _decode(_MEMBERS, cursor, _customer_id)
    with reading():
        page = await stored.members(
            container_of(request).pool, organization_id, group_id, limit=limit, after=after
        )
    if page is None:
        raise ApiError.of(GroupNotFound(group_id))
    return json_response(
        {
            "customers": [
                {"customer_id": m.customer_id, "added_at": format_time(m.added_at)}
                for m in page.items
            ],
            "next_cursor": _encode(_MEMBERS, page.next),
        }
    )


@router.post("/{group_id}/customers", response_model=GroupBody, responses=MEMBER_WRITE_RESPONSES)
async def add_customers(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    body: CustomersBody,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    """Adds those not in the group yet; answers with the group after the command."""
    fields = _change("group.customers.add", group_id, body.customer_ids, if_match)
    return respond(await execute(request, organization_id, idempotency_key, fields))


@router.post(
    "/{group_id}/customers/remove", response_model=GroupBody, responses=MEMBER_WRITE_RESPONSES
)
async def remove_customers(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    body: CustomersBody,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    """Removes those in the group; answers with the group after the command."""
    fields = _change("group.customers.remove", group_id, body.customer_ids, if_match)
    return respond(await execute(request, organization_id, idempotency_key, fields))


# `:path` so that an id with a `/` in it (sent as %2F, which servers decode) is one id.
@router.delete(
    "/{group_id}/customers/{customer_id:path}",
    status_code=204,
    response_class=Response,
    responses=MEMBER_WRITE_RESPONSES,
)
async def remove_customer(
    request: Request,
    *,
    organization_id: Organization,
    group_id: GroupId,
    customer_id: CustomerId,
    idempotency_key: IdempotencyKey = None,
    if_match: IfMatch = None,
) -> Response:
    """Removes one customer; a customer not in the group is no error."""
    customer_ids = [checked_customer_id(customer_id)]
    fields = _change("group.customers.remove", group_id, customer_ids, if_match)
    outcome = await execute(request, organization_id, idempotency_key, fields)
    return respond(outcome, success_code=204)


def _change(
    kind: str, group_id: str, customer_ids: list[str], if_match: str | None
) -> dict[str, Any]:
    fields = {"type": kind, "group_id": checked_group_id(group_id), "customer_ids": customer_ids}
    return guarded(fields, if_match)


@customers.get(
    "/{customer_id:path}/customer-groups",
    response_model=CustomerGroupList,
    responses=CUSTOMER_ERRORS,
)
async def list_customer_groups(
    request: Request,
    *,
    organization_id: Organization,
    customer_id: CustomerId,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    """The live groups of this organization the customer is in, in id order."""
    checked_customer_id(customer_id)
    after = _decode(_GROUPS, cursor, _group_id)
    with reading():
        page = await stored.customer_groups(
            container_of(request).pool, organization_id, customer_id, limit=limit, after=after
        )
    return json_response(
        {
            "customer_groups": [group_json(g) for g in page.items],
            "next_cursor": _encode(_GROUPS, page.next),
        }
    )
