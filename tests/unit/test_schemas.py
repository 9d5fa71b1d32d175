"""docs/schemas/: the JSON Schema of every message, committed; regenerated here, so a model
change without `customer-groups schemas` fails. What the service writes validates against
them, and what it refuses does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from service.adapters.kafka.events import dataschema
from service.config import Settings
from service.domain.commands import CreateGroup
from service.domain.errors import GroupNameTaken
from service.domain.events import CustomersAdded, GroupCreated, GroupUpdated
from service.domain.model import Group
from service.domain.results import CommandResult
from service.entrypoints.schemas import ASYNCAPI, MESSAGES, asyncapi, generate

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return loaded


def valid(name: str, message: Any) -> bool:
    validator = jsonschema.Draft202012Validator(schema(name))
    return not list(validator.iter_errors(message))


def test_the_committed_schemas_are_what_the_models_generate() -> None:
    generated = generate()
    committed = {p.name: p.read_text() for p in SCHEMAS.glob("*.schema.json")}
    assert sorted(committed) == sorted(generated), "run: customer-groups schemas"
    for file, text in generated.items():
        assert committed[file] == text, f"{file} is stale; run: customer-groups schemas"


def test_events_name_the_committed_event_schema_in_ce_dataschema() -> None:
    assert dataschema(Settings(_env_file=None)) == schema("event")["$id"]
    assert dataschema(Settings(_env_file=None, ce_dataschema_base="")) == ""
    with pytest.raises(ValueError, match="ce_dataschema_base"):
        Settings(_env_file=None, ce_dataschema_base="https://x/\x00")


def test_the_committed_asyncapi_document_is_what_the_service_serves() -> None:
    committed = (SCHEMAS.parents[1] / ASYNCAPI).read_text()
    assert committed == asyncapi(), "docs/asyncapi.json is stale; run: customer-groups schemas"
    assert json.loads(committed)["asyncapi"].startswith("3.")


@pytest.mark.parametrize("name", MESSAGES)
def test_each_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    document = schema(name)
    jsonschema.Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"].endswith(f"/{name}.schema.json")


def a_group() -> Group:
    command = CreateGroup.model_validate(
        {"command_id": "c-1", "organization_id": "org_a", "type": "group.create", "name": "VIP"}
    )
    return Group.create(command, "grp_1", datetime(2026, 12, 6, tzinfo=UTC))


def test_what_the_service_writes_validates() -> None:
    group = a_group()
    accepted = CommandResult.accepted("c-1", 201, group).to_json()
    counted = CommandResult.accepted("c-2", 200, group, {"changed": 1, "unchanged": 0}).to_json()
    rejected = CommandResult.rejected("c-3", "org_a", GroupNameTaken("VIP")).to_json()
    assert valid("result", accepted) and valid("result", counted) and valid("result", rejected)
    for event in (
        GroupCreated(group),
        GroupUpdated(group, {"name": "Old"}),
        CustomersAdded(group, ("cus_1",)),
    ):
        assert valid("event", event.payload()), event.type
    assert valid("group", GroupCreated(group).payload())


@pytest.mark.parametrize(
    ("name", "message", "accepted"),
    [
        (
            "command.group.create",
            {"command_id": "c", "organization_id": "org_a", "type": "group.create", "name": "VIP"},
            True,
        ),
        (
            "command.group.create",
            {"command_id": "c", "organization_id": "org a", "type": "group.create", "name": "V"},
            False,
        ),
        (
            "command.group.create",
            {"command_id": "c", "organization_id": "org_a", "type": "group.create", "nme": "V"},
            False,
        ),
        (
            "command.group.customers.add",
            {
                "command_id": "c",
                "organization_id": "org_a",
                "type": "group.customers.add",
                "group_id": "grp_1",
                "customer_ids": ["cus_1"],
            },
            True,
        ),
        (
            "command.group.delete",
            {"command_id": "c", "organization_id": "org_a", "type": "group.delete"},
            False,
        ),
    ],
    ids=["create", "organization with a space", "unknown field", "add customers", "no group"],
)
def test_commands_validate_as_the_consumer_judges_them(
    name: str, message: dict[str, Any], accepted: bool
) -> None:
    assert valid(name, message) is accepted
