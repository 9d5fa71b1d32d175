"""Security in transit for real: a broker that takes only SASL_SSL (SCRAM-SHA-512, a
certificate of a CA of its own) and PostgreSQL over TLS with verify-full. The service and
the ops tools work over them; a wrong password, an untrusted certificate or a plaintext
attempt is refused with an error that says so."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from service.bootstrap import lifespan
from service.config import Settings
from tests.kafka_node import REPO, KafkaNode, SaslSsl, missing_requirements
from tests.support import KafkaProbe, command, wait_until_assigned

USER, PASSWORD = "customer-groups", "scram-secret-1"
TLS_SCRIPT = REPO / "deploy" / "local" / "tls.sh"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def certificates(directory: Path) -> Path:
    subprocess.run(["bash", str(TLS_SCRIPT), str(directory)], check=True, capture_output=True)
    return directory


@pytest.fixture
async def secure_kafka(tmp_path: Path) -> AsyncIterator[KafkaNode]:
    if (reason := missing_requirements()) is not None:
        unavailable(f"a private Kafka node is needed: {reason}")
    tls = certificates(tmp_path / "tls")
    node = KafkaNode(tmp_path / "kafka", SaslSsl(tls, {USER: PASSWORD}))
    node.start()
    try:
        await node.wait_ready()
        yield node
    finally:
        node.stop()


def over_sasl_ssl(settings: Settings, node: KafkaNode, **changes: object) -> Settings:
    assert node.sasl_ssl is not None
    values: dict[str, object] = {
        "kafka_bootstrap_servers": node.secure_bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": USER,
        "kafka_sasl_password": SecretStr(PASSWORD),
        "kafka_ssl_cafile": str(node.sasl_ssl.tls / "ca.pem"),
    }
    return settings.model_copy(update=values | changes)


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def ops(settings: Settings, *argv: str) -> Ran:
    """`customer-groups ARGV` in a process of its own, configured by the environment; the
    event loop (and the service in it) runs meanwhile."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.entrypoints.cli",
        *argv,
        env={**os.environ, **settings.environment()},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


async def test_the_service_and_the_ops_tools_work_over_sasl_ssl(
    settings: Settings, pool: asyncpg.Pool, secure_kafka: KafkaNode
) -> None:
    secure = over_sasl_ssl(settings, secure_kafka)
    async with lifespan(secure) as service:
        await wait_until_assigned(service)
        probe = KafkaProbe(secure)
        await probe.start()
        try:
            result = await probe.ask(command(name="Over TLS"))
            assert (result["status"], result["code"]) == ("accepted", 201)
            [event] = await probe.wait_events(1)
            assert json.loads(event.value)["name"] == "Over TLS"
            sent = await ops(
                secure,
                "send",
                "--type",
                "create",
                "--organization",
                "org_tls",
                "--name",
                "Sent by the ops tool",
                "--timeout",
                "30",
                "--json",
            )
            assert sent.returncode == 0, sent.stderr
            assert json.loads(sent.stdout)["result"]["code"] == 201
        finally:
            await probe.stop()


@pytest.mark.parametrize("fault", ["wrong password", "untrusted certificate", "plaintext"])
async def test_what_the_broker_refuses_is_an_error_that_says_why(
    settings: Settings, secure_kafka: KafkaNode, tmp_path: Path, fault: str
) -> None:
    faults: dict[str, dict[str, object]] = {
        "wrong password": {"kafka_sasl_password": SecretStr("not-the-password")},
        "untrusted certificate": {
            "kafka_ssl_cafile": str(certificates(tmp_path / "other-ca") / "ca.pem")
        },
        "plaintext": {"kafka_security_protocol": "PLAINTEXT"},
    }
    changes = faults[fault]
    refused = await ops(
        over_sasl_ssl(settings, secure_kafka, **changes),
        "send",
        "--type",
        "create",
        "--organization",
        "org_tls",
        "--name",
        "Never sent",
        "--timeout",
        "5",
    )
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    expected = {
        "wrong password": "authentication",
        "untrusted certificate": "certificate",
        "plaintext": "Kafka",
    }[fault]
    assert expected.lower() in refused.stderr.lower(), refused.stderr


def tls_database() -> tuple[str, str]:
    url, ca = os.environ.get("LOCAL_POSTGRES_TLS_URL"), os.environ.get("LOCAL_POSTGRES_TLS_CA")
    if not url or not ca:
        unavailable("LOCAL_POSTGRES_TLS_URL and LOCAL_POSTGRES_TLS_CA (make services) are needed")
    assert url is not None and ca is not None
    return url, ca


def with_database(url: str, database: str) -> str:
    return url.rsplit("/", 1)[0] + f"/{database}"


async def test_the_service_works_over_postgres_tls_with_verify_full(
    settings: Settings, kafka: KafkaProbe
) -> None:
    url, ca = tls_database()
    database = settings.database_url.get_secret_value().rsplit("/", 1)[1].split("?")[0]
    secure = settings.model_copy(
        update={
            "database_url": SecretStr(with_database(url, database)),
            "database_ssl_mode": "verify-full",
            "database_ssl_root_cert": ca,
        }
    )
    async with lifespan(secure) as service:
        await wait_until_assigned(service)
        result = await kafka.ask(command(name="Stored over TLS"))
        assert (result["status"], result["code"]) == ("accepted", 201)
        ssl_in_use = await service.pool.fetchval(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        )
        assert ssl_in_use is True


@pytest.mark.parametrize("fault", ["plaintext", "untrusted certificate"])
async def test_postgres_refuses_plaintext_and_the_client_refuses_an_untrusted_server(
    settings: Settings, tmp_path: Path, fault: str
) -> None:
    url, _ = tls_database()
    if fault == "plaintext":
        changes = {"database_ssl_mode": "disable"}
        expected = "no encryption"
    else:
        other = certificates(tmp_path / "other-ca") / "ca.pem"
        changes = {"database_ssl_mode": "verify-full", "database_ssl_root_cert": str(other)}
        expected = "certificate"
    refused = await ops(
        settings.model_copy(update={"database_url": SecretStr(url), **changes}), "migrate"
    )
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
    assert expected in refused.stderr.lower(), refused.stderr
