"""Request and response bodies of the customer-groups API, and the errors each route documents."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from service.domain.commands import (
    CUSTOMER_ID_MAX,
    CUSTOMER_IDS_MAX,
    DESCRIPTION_MAX,
    NAME_MAX,
    PLATFORM_ID_MAX,
)
from service.entrypoints.asyncapi import GroupSchema

PREFIX = "/api/v1/customer-groups"
CUSTOMERS_PREFIX = "/api/v1/customers"


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


_NEXT_CURSOR = "Pass as `cursor` for the next page; null at the end."


class GroupBody(BaseModel):
    customer_group: GroupSchema


class GroupList(BaseModel):
    customer_groups: list[GroupSchema]
    next_cursor: str | None = Field(description=_NEXT_CURSOR)
    page: int
    limit: int


class Member(BaseModel):
    customer_id: str = Field(examples=["cus_1"])
    added_at: str = Field(examples=["2026-11-22T10:30:00.123456Z"])


class MemberList(BaseModel):
    customers: list[Member] = Field(description="In customer_id order")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


class CustomerGroupList(BaseModel):
    customer_groups: list[GroupSchema] = Field(description="Live groups only, in id order")
    next_cursor: str | None = Field(description=_NEXT_CURSOR)


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


class CustomersBody(BaseModel):
    # As CreateBody: the command's validators judge the ids, with the command's messages.
    model_config = ConfigDict(extra="forbid")

    customer_ids: list[Text] = Field(
        description=(
            f"1-{CUSTOMER_IDS_MAX:,} ids, each 1-{CUSTOMER_ID_MAX} characters with no control"
            " characters and no leading or trailing whitespace; an id repeated counts once."
        ),
        json_schema_extra={"minItems": 1, "maxItems": CUSTOMER_IDS_MAX},
        examples=[["cus_1", "cus_2"]],
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


# A customer's groups: a customer unknown here is in no group, which is no error.
CUSTOMER_ERRORS = {code: answer for code, answer in ERRORS.items() if code != 404}


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


MEMBER_WRITE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **WRITE_RESPONSES,
    **_errors((409, "Version conflict, or Idempotency-Key reused with another body")),
}
