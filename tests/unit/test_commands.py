"""The wire schema of commands: what is a command, what is a 422, what is dead-lettered."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from pydantic import TypeAdapter

from service.domain.commands import (
    DESCRIPTION_MAX,
    NAME_MAX,
    PLATFORM_ID_MAX,
    Command,
    CreateGroup,
    DeleteGroup,
    UpdateGroup,
)
from service.parsing import Invalid, parse_command

MAX = 1024 * 1024
CID = "5b0c3c1e-6f1e-4a8e-9d55-0e8f3f7c2a10"
IDS = {"command_id": CID, "organization_id": "org_42"}


def body(type_: str = "group.create", /, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {**IDS, "type": type_}
    if type_ == "group.create":
        base["name"] = "VIP Customers"
    elif "group_id" not in fields:
        base["group_id"] = "grp_01JD3K5Q9Z8X"
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def parse(value: dict[str, Any] | bytes, max_bytes: int = MAX) -> Any:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return parse_command(raw, max_bytes)


def accepted(value: dict[str, Any]) -> Any:
    parsed = parse(value)
    assert not isinstance(parsed, Invalid), parsed
    return parsed


def rule_only(value: dict[str, Any]) -> Invalid:
    """A well-formed command that breaks a rule: a 422 result, nothing dead-lettered."""
    parsed = parse(value)
    assert isinstance(parsed, Invalid), parsed
    assert not parsed.malformed, parsed
    assert parsed.reason == "validation"
    assert (parsed.command_id, parsed.organization_id) == (
        value["command_id"],
        value["organization_id"],
    )
    return parsed


def malformed(value: dict[str, Any] | bytes, max_bytes: int = MAX) -> Invalid:
    parsed = parse(value, max_bytes)
    assert isinstance(parsed, Invalid), parsed
    assert parsed.malformed, parsed
    return parsed


def test_the_contract_example_is_a_command() -> None:
    parsed = accepted(
        {
            "command_id": CID,
            "type": "group.create",
            "organization_id": "org_42",
            "group_id": "grp_01JD3K5Q9Z8X",
            "name": "VIP Customers",
            "description": "High-value customers with premium benefits",
            "platform_id": "12345678",
            "expected_version": 3,
        }
    )
    assert isinstance(parsed, CreateGroup)
    assert (parsed.group_id, parsed.name, parsed.platform_id) == (
        "grp_01JD3K5Q9Z8X",
        "VIP Customers",
        "12345678",
    )


def test_each_type_becomes_its_command() -> None:
    assert isinstance(accepted(body("group.create")), CreateGroup)
    assert isinstance(accepted(body("group.update", expected_version=3)), UpdateGroup)
    assert isinstance(accepted(body("group.delete", expected_version=3)), DeleteGroup)
    assert accepted(body("group.create", group_id=None)).group_id is None


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty"),
        (b"not json", "not_json"),
        (b'{"command_id": "x", ', "not_json"),
        (b"\xff\xfe{}", "not_json"),
        (b"[]", "not_object"),
        (json.dumps([body()]).encode(), "not_object"),
        (b'"group.create"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
    ],
)
def test_what_is_not_a_json_object_is_malformed_with_no_ids(raw: bytes, reason: str) -> None:
    parsed = malformed(raw)
    assert parsed.reason == reason
    assert (parsed.command_id, parsed.organization_id) == (None, None)


def test_no_value_at_all_is_malformed() -> None:
    assert parse_command(None, MAX) == Invalid("empty", "The message has no value", malformed=True)


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "group.rename"},
        {"type": ...},
        {"type": None},
        {"name": 5},
        {"name": ["VIP"]},
        {"description": 5},
        {"platform_id": 12345678},
        {"group_id": 7},
        {"unexpected": "field"},
        {"Name": "VIP"},
        {"name": "VIP\x00"},
        {"description": "a\x00b"},
        {"platform_id": "\x00"},
    ],
)
def test_schema_breaks_are_malformed_and_still_name_the_command(fields: dict[str, Any]) -> None:
    parsed = malformed(body(**fields))
    assert parsed.reason == "invalid_schema"
    assert (parsed.command_id, parsed.organization_id) == (CID, "org_42")


@pytest.mark.parametrize(
    "fields",
    [
        {"expected_version": "3"},
        {"expected_version": 3.5},
        {"expected_version": True},
        {"group_id": ...},
        {"group_id": None},
    ],
)
def test_update_schema_breaks_are_malformed(fields: dict[str, Any]) -> None:
    assert malformed(body("group.update", **fields)).reason == "invalid_schema"
    assert malformed(body("group.delete", **fields)).reason == "invalid_schema"


@pytest.mark.parametrize(
    "ids",
    [
        {"command_id": ...},
        {"command_id": ""},
        {"command_id": "x" * 129},
        {"command_id": 42},
        {"organization_id": ...},
        {"organization_id": ""},
        {"organization_id": "o" * 65},
        {"organization_id": "org 42"},
        {"organization_id": "org/42"},
        {"organization_id": "org_\u00e4"},
        {"organization_id": 42},
        {"organization_id": "org_42\n"},
        {"organization_id": "\norg_42"},
    ],
)
def test_a_command_without_readable_ids_is_malformed_and_gets_no_result(
    ids: dict[str, Any],
) -> None:
    parsed = malformed(body(**ids))
    assert parsed.reason == "invalid_schema"
    assert (parsed.command_id, parsed.organization_id) == (None, None)


def test_a_nul_in_the_command_id_still_leaves_it_readable_for_the_result() -> None:
    # The result goes to Kafka, not PostgreSQL, so the id is echoed as sent.
    parsed = malformed(body(command_id="ok\x00"))
    assert parsed.command_id == "ok\x00"


@pytest.mark.parametrize(
    "ids",
    [
        {"command_id": "x"},
        {"command_id": "x" * 128},
        {"organization_id": "o"},
        {"organization_id": "o" * 64},
        {"organization_id": "Org-1.a:b_C"},
    ],
)
def test_id_boundaries_are_accepted(ids: dict[str, Any]) -> None:
    parsed = accepted(body(**ids))
    assert (parsed.command_id, parsed.organization_id) == (
        ids.get("command_id", CID),
        ids.get("organization_id", "org_42"),
    )


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"name": ...}, "Name is required"),
        ({"name": None}, "Name is required"),
        ({"name": ""}, "Name is required"),
        ({"name": "   "}, "Name is required"),
        ({"name": " \t\n "}, "Name is required"),
        ({"name": "x" * 101}, "Name must be at most 100 characters"),
        ({"name": " " + "x" * 101}, "Name must be at most 100 characters"),
        ({"name": "VIP\tCustomers"}, "Name must not contain control characters"),
        ({"name": "VIP\nCustomers"}, "Name must not contain control characters"),
        ({"name": "VIP\x1b[31m"}, "Name must not contain control characters"),
        ({"name": "VIP\x7f"}, "Name must not contain control characters"),
        ({"name": "VIP\x85x"}, "Name must not contain control characters"),
        ({"description": "d" * 501}, "Description must be at most 500 characters"),
        ({"platform_id": "p" * 256}, "Platform id must be at most 255 characters"),
        (
            {"group_id": "grp_"},
            "group_id must be 'grp_' followed by 1-60 characters of [A-Za-z0-9_-]",
        ),
    ],
)
def test_create_rules_are_422_only(fields: dict[str, Any], details: str) -> None:
    assert rule_only(body(**fields)).details == details


@pytest.mark.parametrize(
    "group_id",
    ["grp_", "grp_" + "a" * 61, "grp_a.b", "grp_a b", "GRP_abc", "grp-abc", "abc", "grp_é", ""],
)
def test_group_id_pattern_is_a_rule(group_id: str) -> None:
    rule_only(body("group.create", group_id=group_id))
    rule_only(body("group.update", group_id=group_id))
    rule_only(body("group.delete", group_id=group_id))


@pytest.mark.parametrize("group_id", ["grp_a", "grp_" + "a" * 60, "grp_A-z_0-9", "grp___"])
def test_group_id_boundaries_are_accepted(group_id: str) -> None:
    assert accepted(body("group.create", group_id=group_id)).group_id == group_id
    assert accepted(body("group.delete", group_id=group_id)).group_id == group_id


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("x", "x"),
        ("x" * 100, "x" * 100),
        ("  " + "x" * 100 + "\n", "x" * 100),
        ("  VIP Customers  ", "VIP Customers"),
        ("Été 🎉", "Été 🎉"),
    ],
)
def test_names_are_trimmed_then_checked(sent: str, kept: str) -> None:
    assert accepted(body(name=sent)).name == kept
    assert accepted(body("group.update", name=sent)).name == kept


def test_description_and_platform_id_boundaries() -> None:
    parsed = accepted(body(description="d" * 500, platform_id="p" * 255))
    assert (len(parsed.description), len(parsed.platform_id)) == (500, 255)
    assert accepted(body(description="", platform_id="")).description == ""
    # Only NUL is refused: a description may have lines.
    assert accepted(body(description="line 1\nline 2\t.")).description == "line 1\nline 2\t."


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"name": ""}, "Name is required"),
        ({"name": None}, "Name cannot be null"),
        ({"name": "x" * 101}, "Name must be at most 100 characters"),
        ({"description": "d" * 501}, "Description must be at most 500 characters"),
        ({"platform_id": "p" * 256}, "Platform id must be at most 255 characters"),
        ({"expected_version": 0}, "expected_version must be a positive integer"),
        ({"expected_version": -1}, "expected_version must be a positive integer"),
    ],
)
def test_update_rules_are_422_only(fields: dict[str, Any], details: str) -> None:
    assert rule_only(body("group.update", **fields)).details == details


@pytest.mark.parametrize("version", [0, -5])
def test_delete_expected_version_must_be_positive(version: int) -> None:
    assert rule_only(body("group.delete", expected_version=version)).details == (
        "expected_version must be a positive integer"
    )


def test_expected_version_is_optional() -> None:
    assert accepted(body("group.update")).expected_version is None
    assert accepted(body("group.update", expected_version=None)).expected_version is None
    assert accepted(body("group.update", expected_version=1)).expected_version == 1
    assert accepted(body("group.delete", expected_version=2**40)).expected_version == 2**40


def test_update_keeps_which_fields_were_sent() -> None:
    assert accepted(body("group.update")).changes() == {}
    assert accepted(body("group.update", description=None)).changes() == {"description": None}
    assert accepted(body("group.update", name=" A ", platform_id="p")).changes() == {
        "name": "A",
        "platform_id": "p",
    }


@pytest.mark.parametrize(
    ("type_", "fields"),
    [
        ("group.delete", {"name": "x"}),
        ("group.delete", {"description": "d"}),
        ("group.delete", {"platform_id": "p"}),
    ],
)
def test_fields_of_another_type_are_malformed(type_: str, fields: dict[str, Any]) -> None:
    assert malformed(body(type_, **fields)).reason == "invalid_schema"


@pytest.mark.parametrize("version", [0, -1])
def test_create_expected_version_must_be_positive_too(version: int) -> None:
    assert rule_only(body(expected_version=version)).details == (
        "expected_version must be a positive integer"
    )


def test_the_schema_states_the_rules_the_validators_check() -> None:
    """Producers read the rules from the AsyncAPI document, generated from these models."""
    schemas = TypeAdapter(Command).json_schema()["$defs"]
    create, update, delete = (schemas[n] for n in ("CreateGroup", "UpdateGroup", "DeleteGroup"))
    assert set(create["required"]) == {"command_id", "organization_id", "type", "name"}
    assert set(update["required"]) == {"command_id", "organization_id", "type", "group_id"}
    for schema in (create, update):
        fields = schema["properties"]
        assert (fields["name"]["minLength"], fields["name"]["maxLength"]) == (1, NAME_MAX)
        assert fields["description"]["maxLength"] == DESCRIPTION_MAX
        assert fields["platform_id"]["maxLength"] == PLATFORM_ID_MAX
        assert fields["expected_version"]["minimum"] == 1
    for schema in (create, update, delete):
        pattern = re.compile(schema["properties"]["group_id"]["pattern"])
        assert pattern.search("grp_" + "a" * 60)
        assert not pattern.search("grp_" + "a" * 61)
        assert not pattern.search("x grp_a")


def test_schema_and_rule_breaks_together_are_malformed() -> None:
    parsed = malformed(body(name="", unexpected=1))
    assert "Name is required" in parsed.details
    assert "unexpected" in parsed.details


def test_details_never_echo_the_input() -> None:
    secret = "s3cr3t-value"
    parsed = malformed(body(name=12, unexpected=secret))
    assert secret not in parsed.details


def test_the_size_limit_is_on_the_raw_bytes() -> None:
    raw = json.dumps(body(description="d" * 400)).encode()
    assert isinstance(parse_command(raw, len(raw)), CreateGroup)
    parsed = parse_command(raw, len(raw) - 1)
    assert isinstance(parsed, Invalid)
    assert (parsed.reason, parsed.malformed) == ("too_large", True)
    assert (parsed.command_id, parsed.organization_id) == (CID, "org_42")


def test_a_value_over_one_mebibyte_is_malformed() -> None:
    raw = json.dumps(body(description="d" * MAX)).encode()
    parsed = malformed(raw)
    assert parsed.reason == "too_large"
    assert parsed.command_id == CID


def test_an_oversize_value_without_ids_has_none() -> None:
    parsed = malformed(json.dumps({"junk": "x" * MAX}).encode())
    assert (parsed.reason, parsed.command_id) == ("too_large", None)


def test_fingerprint_ignores_key_order_and_trimming_but_not_content() -> None:
    a = accepted(body("group.update", name="VIP", description="d"))
    b = parse(
        json.dumps(
            dict(reversed(list(body("group.update", name=" VIP ", description="d").items())))
        ).encode()
    )
    assert a.fingerprint() == b.fingerprint()
    assert (
        a.fingerprint() != accepted(body("group.update", name="VIP", description="e")).fingerprint()
    )
    assert a.fingerprint() != accepted(body("group.update", name="VIP")).fingerprint()
    assert (
        a.fingerprint()
        != accepted(
            body("group.update", name="VIP", description="d", expected_version=1)
        ).fingerprint()
    )
    assert (
        a.fingerprint()
        != accepted(
            body("group.update", name="VIP", description="d", organization_id="org_43")
        ).fingerprint()
    )


def test_details_stay_small_however_many_problems_the_input_has() -> None:
    many = body(**{f"extra_{n}": n for n in range(50_000)})
    huge_name = body(**{"x" * 500_000: 1, "\u0001" * 100_000: 2})
    for value in (many, huge_name):
        parsed = malformed(value)
        assert len(parsed.details) < 3000
        assert parsed.command_id == CID
