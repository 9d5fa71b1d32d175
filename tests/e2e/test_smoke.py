from __future__ import annotations

import json

from service.bootstrap import Container
from tests.support import KafkaProbe, command, headers_of


async def test_create_then_event(service: Container, kafka: KafkaProbe) -> None:
    body = command(name="VIP Customers")
    result = await kafka.ask(body)
    assert result["status"] == "accepted"
    assert result["code"] == 201
    [event] = await kafka.wait_events(1)
    assert headers_of(event)["ce_type"] == "group.created"
    assert json.loads(event.value)["name"] == "VIP Customers"
