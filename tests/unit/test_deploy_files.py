"""What the deploy files and docs say. docker-compose.yml cannot run here (no Docker engine):
check that it says what it must. The docs: every setting has a row, every link a file."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_compose_names_kafka_postgres_and_the_service() -> None:
    services = _compose()["services"]
    assert set(services) == {"kafka", "postgres", "service"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["service"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (ROOT / services["service"]["build"]["dockerfile"]).is_file()
    for name, service in services.items():
        assert "healthcheck" in service, name
    for dependency in ("kafka", "postgres"):
        assert services["service"]["depends_on"][dependency]["condition"] == "service_healthy"


def test_compose_service_environment_uses_real_settings() -> None:
    environment = _compose()["services"]["service"]["environment"]
    known = {name.upper() for name in Settings.model_fields}
    assert {"DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"} <= set(environment)
    assert set(environment) <= known, set(environment) - known
    assert environment["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "@postgres:5432/" in environment["DATABASE_URL"]


def test_compose_postgres_credentials_match_the_service_url() -> None:
    services = _compose()["services"]
    pg = services["postgres"]["environment"]
    url = services["service"]["environment"]["DATABASE_URL"]
    expected = f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    assert url == expected


def test_every_setting_is_documented_in_docs_configuration() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    table = {
        name.strip("`")
        for line in page.splitlines()
        if line.startswith("| `")
        for name in line.split("|")[1].replace("/", " ").split()
    }
    for field in Settings.model_fields:
        variable = field.upper()
        short = variable.removeprefix("TOPIC_PARTITIONS_")
        assert variable in table or f"_{short}" in table, variable


def test_every_file_the_readme_links_to_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    targets = set(re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", readme))
    assert "docs/configuration.md" in targets
    for target in targets:
        assert (ROOT / target).exists(), target
