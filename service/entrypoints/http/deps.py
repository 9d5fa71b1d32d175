"""What a route needs from its request: the caller's organization, checked ids and headers."""

from __future__ import annotations

import hmac
import logging
import re
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.adapters.oidc import KeysUnavailable
from service.bootstrap import Container
from service.domain.commands import CUSTOMER_ID_MAX, GROUP_ID, customer_id_problem
from service.domain.errors import GroupNotFound, InvalidCommand
from service.entrypoints.http.errors import (
    ApiError,
)
from service.entrypoints.http.schemas import (
    Text,
)

_VERSION_TAG = re.compile(r'(?:W/)?"?([0-9]{1,9})"?')


_bearer = HTTPBearer(
    auto_error=False,
    description="A token configured in API_TOKENS, or a JWT of the OIDC_ISSUER provider",
)
log = logging.getLogger(__name__)


def container_of(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


# Far above any JWT a provider issues; a longer header is refused unread.
TOKEN_MAX_CHARS = 16_384


async def organization(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The token's organization: a static API_TOKENS token (every one compared, each in
    constant time), else an OIDC token when OIDC_* are set."""
    if credentials is not None and len(credentials.credentials) <= TOKEN_MAX_CHARS:
        container = container_of(request)
        presented = credentials.credentials.encode()
        found: str | None = None
        for token, organization_id in container.settings.token_organizations.items():
            if hmac.compare_digest(presented, token.encode()):
                found = organization_id
        if found is None and container.verifier is not None:
            try:
                found = await container.verifier.organization(credentials.credentials)
            except KeysUnavailable as error:
                log.warning("no OIDC token can be checked: %s", error)
                raise ApiError(
                    503, "Service unavailable", "The token issuer's keys could not be read"
                ) from error
        if found is not None:
            return found
    raise ApiError(401, "Unauthorized", "A valid bearer token is required")


Organization = Annotated[str, Depends(organization)]


GroupId = Annotated[Text, Path(description="The group's id, `grp_...`")]


CustomerId = Annotated[
    Text,
    Path(
        description=(
            f"1-{CUSTOMER_ID_MAX} characters, no control characters, no leading or trailing"
            " whitespace; a `/` in it is sent as `%2F`"
        )
    ),
]


IdempotencyKey = Annotated[
    Text | None,
    Header(description="Becomes the command_id: a retry with the same key gets the first result."),
]


IfMatch = Annotated[
    Text | None, Header(description='The version the group must have, as its ETag: "3"')
]


def expected_version(if_match: str | None) -> int | None:
    if if_match is None or if_match.strip() == "*":
        return None
    match = _VERSION_TAG.fullmatch(if_match.strip())
    if match is None:
        raise ApiError(422, InvalidCommand.error, 'If-Match must be a group version, e.g. "3"')
    return int(match.group(1))


def checked_group_id(group_id: str) -> str:
    if not GROUP_ID.fullmatch(group_id):
        raise ApiError.of(GroupNotFound(group_id))
    return group_id


def checked_customer_id(customer_id: str) -> str:
    if (problem := customer_id_problem(customer_id)) is not None:
        raise ApiError(422, InvalidCommand.error, f"customer_id {problem}")
    return customer_id
