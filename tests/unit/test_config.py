from __future__ import annotations

import pytest

from service.config import Settings


def test_settings_survive_the_trip_through_a_child_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Settings(
        database_url="postgresql://u:secret@db:5432/x",
        kafka_sasl_password="kafka-secret",
        topic_events="custom.events",
        relay_publish_state=False,
        relay_poll_max_s=0.05,
        api_tokens="t=org_a",
    )
    for name, value in original.environment().items():
        monkeypatch.setenv(name, value)
    assert Settings(_env_file=None) == original


def test_secrets_do_not_show_in_the_settings_repr() -> None:
    settings = Settings(database_url="postgresql://u:hunter2@db/x", api_tokens="tok=org_a")
    assert "hunter2" not in repr(settings)
    assert "tok=" not in repr(settings)
