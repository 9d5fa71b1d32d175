"""Commands producers send, validated at the edge.

Two kinds of failure are told apart on purpose: a message that breaks the wire schema
(wrong types, unknown fields, unknown type, NUL bytes) is malformed and goes to the
dead-letter topic; a well-formed command that breaks a business rule (a blank name, a
description that is too long) is an ordinary 422 rejection.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

RULE_ERROR = "rule"

ORGANIZATION_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
GROUP_ID = re.compile(r"grp_[A-Za-z0-9_-]{1,60}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

NAME_MAX = 100
DESCRIPTION_MAX = 500
PLATFORM_ID_MAX = 255
COMMAND_ID_MAX = 128


def rule(message: str) -> PydanticCustomError:
    return PydanticCustomError(RULE_ERROR, message)


def valid_organization_id(value: object) -> bool:
    return isinstance(value, str) and ORGANIZATION_ID.fullmatch(value) is not None


def valid_command_id(value: object) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= COMMAND_ID_MAX


def _no_nul(value: Any) -> Any:
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("NUL bytes are not allowed")
    return value


class _Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    command_id: Annotated[str, Field(min_length=1, max_length=COMMAND_ID_MAX)]
    # pydantic searches a pattern anywhere in the string; anchored, it must match all of it.
    organization_id: Annotated[str, Field(pattern=f"^{ORGANIZATION_ID.pattern}$", max_length=64)]

    @model_validator(mode="before")
    @classmethod
    def _reject_nul(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for value in data.values():
                _no_nul(value)
        return data

    def fingerprint(self) -> str:
        """A hash of what the producer asked for, to tell a redelivery from a reused id."""
        canonical = orjson.dumps(
            self.model_dump(mode="json", exclude_unset=True), option=orjson.OPT_SORT_KEYS
        )
        return hashlib.sha256(canonical).hexdigest()


def _documented(description: str, **rules: Any) -> Any:
    """A field's rules for the generated schema only. The validators below check them and
    raise rule errors (422s); as Field constraints, a breach would count as malformed."""
    return Field(default=None, description=description, json_schema_extra=rules)


def _name_in_schema_required(schema: dict[str, Any]) -> None:
    schema["required"].append("name")


_GROUP_ID_SCHEMA = f"^{GROUP_ID.pattern}$"
_GROUP_ID_DOC = "'grp_' + 1-60 of [A-Za-z0-9_-]"
_NAME_DOC = (
    "Trimmed, then 1-100 characters, no control characters; unique per organization among"
    " live groups, compared case-insensitively."
)
_DESCRIPTION_DOC = "At most 500 characters."
_PLATFORM_ID_DOC = "At most 255 characters: the group's id on an external platform."
_VERSION_DOC = "The group's current version; a mismatch is rejected with 409."

# Update's and delete's group id: required, and documented like create's.
ExistingGroupId = Annotated[
    str, Field(description=_GROUP_ID_DOC, json_schema_extra={"pattern": _GROUP_ID_SCHEMA})
]


def _check_group_id(value: str | None) -> str | None:
    if value is not None and not GROUP_ID.fullmatch(value):
        raise rule("group_id must be 'grp_' followed by 1-60 characters of [A-Za-z0-9_-]")
    return value


def _check_name(value: str | None) -> str | None:
    if value is None:
        return None
    name = value.strip()
    if not name:
        raise rule("Name is required")
    if len(name) > NAME_MAX:
        raise rule(f"Name must be at most {NAME_MAX} characters")
    if _CONTROL.search(name):
        raise rule("Name must not contain control characters")
    return name


def _check_description(value: str | None) -> str | None:
    if value is not None and len(value) > DESCRIPTION_MAX:
        raise rule(f"Description must be at most {DESCRIPTION_MAX} characters")
    return value


def _check_platform_id(value: str | None) -> str | None:
    if value is not None and len(value) > PLATFORM_ID_MAX:
        raise rule(f"Platform id must be at most {PLATFORM_ID_MAX} characters")
    return value


def _check_expected_version(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise rule("expected_version must be a positive integer")
    return value


class CreateGroup(_Command):
    model_config = ConfigDict(json_schema_extra=_name_in_schema_required)

    type: Literal["group.create"]
    group_id: str | None = _documented(
        f"{_GROUP_ID_DOC}; generated when absent.", pattern=_GROUP_ID_SCHEMA
    )
    name: str | None = _documented(_NAME_DOC, minLength=1, maxLength=NAME_MAX)
    description: str | None = _documented(_DESCRIPTION_DOC, maxLength=DESCRIPTION_MAX)
    platform_id: str | None = _documented(_PLATFORM_ID_DOC, maxLength=PLATFORM_ID_MAX)
    # Accepted so that a producer may send every command with the same fields; a group
    # that does not exist yet has no version to compare, so it has no effect.
    expected_version: int | None = _documented("Accepted and ignored on create.", minimum=1)

    _group_id = field_validator("group_id")(_check_group_id)
    _name = field_validator("name")(_check_name)
    _description = field_validator("description")(_check_description)
    _platform_id = field_validator("platform_id")(_check_platform_id)
    _expected_version = field_validator("expected_version")(_check_expected_version)

    @model_validator(mode="after")
    def _name_required(self) -> CreateGroup:
        if self.name is None:
            raise rule("Name is required")
        return self


class UpdateGroup(_Command):
    type: Literal["group.update"]
    group_id: ExistingGroupId
    name: str | None = _documented(
        f"{_NAME_DOC} Absent: unchanged.", minLength=1, maxLength=NAME_MAX
    )
    description: str | None = _documented(
        f"{_DESCRIPTION_DOC} Absent: unchanged; null clears it.", maxLength=DESCRIPTION_MAX
    )
    platform_id: str | None = _documented(
        f"{_PLATFORM_ID_DOC} Absent: unchanged; null clears it.", maxLength=PLATFORM_ID_MAX
    )
    expected_version: int | None = _documented(_VERSION_DOC, minimum=1)

    _group_id = field_validator("group_id")(_check_group_id)
    _name = field_validator("name")(_check_name)
    _description = field_validator("description")(_check_description)
    _platform_id = field_validator("platform_id")(_check_platform_id)
    _expected_version = field_validator("expected_version")(_check_expected_version)

    @model_validator(mode="after")
    def _name_not_null(self) -> UpdateGroup:
        if "name" in self.model_fields_set and self.name is None:
            raise rule("Name cannot be null")
        return self

    def changes(self) -> dict[str, str | None]:
        """The fields the producer sent: an absent field is left alone, a null clears it."""
        return {
            field: getattr(self, field)
            for field in ("name", "description", "platform_id")
            if field in self.model_fields_set
        }


class DeleteGroup(_Command):
    type: Literal["group.delete"]
    group_id: ExistingGroupId
    expected_version: int | None = _documented(_VERSION_DOC, minimum=1)

    _group_id = field_validator("group_id")(_check_group_id)
    _expected_version = field_validator("expected_version")(_check_expected_version)


CUSTOMER_IDS_MAX = 1000
CUSTOMER_ID_MAX = 128
_CUSTOMER_IDS_DOC = (
    f"1-{CUSTOMER_IDS_MAX:,} customer ids, each 1-{CUSTOMER_ID_MAX} characters with no control"
    " characters and no leading or trailing whitespace; an id repeated counts once."
)


def customer_id_problem(customer_id: str) -> str | None:
    """What keeps `customer_id` from being a customer id, or None: the one rule commands,
    HTTP paths and the import tool share."""
    if not 1 <= len(customer_id) <= CUSTOMER_ID_MAX:
        return f"must be 1-{CUSTOMER_ID_MAX} characters"
    if customer_id != customer_id.strip():
        return "must not start or end with whitespace"
    if _CONTROL.search(customer_id):
        return "must not contain control characters"
    return None


def _check_customer_ids(value: list[str]) -> list[str]:
    if not value:
        raise rule("customer_ids must hold at least one id")
    if len(value) > CUSTOMER_IDS_MAX:
        raise rule(f"customer_ids must hold at most {CUSTOMER_IDS_MAX} ids")
    for position, customer_id in enumerate(value):
        if (problem := customer_id_problem(customer_id)) is not None:
            raise rule(f"customer_ids[{position}] {problem}")
    return value


class _ChangeCustomers(_Command):
    group_id: ExistingGroupId
    customer_ids: list[str] = Field(
        description=_CUSTOMER_IDS_DOC,
        json_schema_extra={"minItems": 1, "maxItems": CUSTOMER_IDS_MAX},
    )
    expected_version: int | None = _documented(_VERSION_DOC, minimum=1)

    _group_id = field_validator("group_id")(_check_group_id)
    _customer_ids = field_validator("customer_ids")(_check_customer_ids)
    _expected_version = field_validator("expected_version")(_check_expected_version)

    def unique_customer_ids(self) -> list[str]:
        """The ids in the order given, each once."""
        return list(dict.fromkeys(self.customer_ids))


def weight(command: object) -> int:
    """What a command costs a transaction, in rows: its customer ids, or one."""
    return len(command.customer_ids) if isinstance(command, _ChangeCustomers) else 1


class AddCustomers(_ChangeCustomers):
    type: Literal["group.customers.add"]


class RemoveCustomers(_ChangeCustomers):
    type: Literal["group.customers.remove"]


Command = Annotated[
    CreateGroup | UpdateGroup | DeleteGroup | AddCustomers | RemoveCustomers,
    Field(discriminator="type"),
]
