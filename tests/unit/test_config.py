from __future__ import annotations

import pytest
from pydantic import ValidationError

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


def test_api_tokens_are_trimmed_and_may_end_in_base64_padding() -> None:
    settings = Settings(api_tokens=" token-a = org_a ,, dG9rZW4= = org.b:1 ,")
    assert settings.token_organizations == {"token-a": "org_a", "dG9rZW4=": "org.b:1"}
    assert Settings(api_tokens=" ").token_organizations == {}


@pytest.mark.parametrize(
    ("api_tokens", "message"),
    [
        ("t=org_a,just-a-token", "API_TOKENS entry 2 must be TOKEN=ORGANIZATION_ID"),
        ("=org_a", "API_TOKENS entry 1 must be TOKEN=ORGANIZATION_ID"),
        ("t=", "API_TOKENS entry 1: organization id '' must be"),
        ("t=org a", "API_TOKENS entry 1: organization id 'org a' must be"),
        ("t=" + "o" * 65, "API_TOKENS entry 1: organization id 'ooo"),
        ("t=org_a,t=org_b", "API_TOKENS entry 2 repeats the token of an earlier entry"),
    ],
)
def test_a_malformed_api_tokens_entry_fails_at_startup(api_tokens: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as refused:
        Settings(api_tokens=api_tokens)
    assert "t=org" not in str(refused.value)
