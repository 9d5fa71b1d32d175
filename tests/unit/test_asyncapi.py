"""The AsyncAPI document describes the whole Kafka contract, customers in groups included."""

from __future__ import annotations

import json
from typing import Any

from service.config import Settings
from service.entrypoints.asyncapi import specification


def document() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(specification(Settings(_env_file=None), "1.1").to_json())
    return data


def test_the_membership_commands_events_and_result_are_documented() -> None:
    data = document()
    schemas = data["components"]["schemas"]
    for name in ("AddCustomers", "RemoveCustomers"):
        properties = schemas[name]["properties"]
        assert properties["customer_ids"]["maxItems"] == 1000, name
        assert "customer_ids" in schemas[name]["required"], name
    assert schemas["GroupSchema"]["properties"]["customer_count"]["minimum"] == 0
    assert "customer_count" in schemas["GroupSchema"]["required"]
    assert "customer_ids" in schemas["GroupEventSchema"]["properties"]
    assert "customers" in schemas["CommandResultSchema"]["properties"]
    assert set(schemas["CustomersChanged"]["properties"]) == {"changed", "unchanged"}
    descriptions = json.dumps([channel.get("description") for channel in data["channels"].values()])
    for name in (
        "group.customers.add",
        "group.customers.remove",
        "group.customers_added",
        "group.customers_removed",
    ):
        assert name in descriptions, name
