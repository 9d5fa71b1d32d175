"""Request and response bodies of the customer-groups API, and the errors each route documents."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from service.domain.commands import (
    DESCRIPTION_MAX,
    NAME_MAX,
    PLATFORM_ID_MAX,
)
from service.entrypoints.asyncapi import GroupSchema

PREFIX = "/api/v1/customer-groups"


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
