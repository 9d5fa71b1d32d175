"""A private single-node Kafka (KRaft) that a test may kill and restart.

Outage tests need a broker they can stop; the shared one on 127.0.0.1:9092 serves other
tests at the same time, so it is never touched. This node takes the jars `make services`
fetched (deploy/local/kafka.sh), free ports and a data directory of its own, and restarts
on the same ports and data, so clients see the same broker come back."""

from __future__ import annotations

import asyncio
import base64
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBS = REPO / ".local" / "kafka" / "libs"
READY = REPO / "deploy" / "local" / "kafka_ready.py"

LOG4J = """\
status = warn
name = test-kafka
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
"""


def die_with_parent(command: list[str]) -> list[str]:
    """`command`, made to get SIGKILL when the test process dies, even if it is killed itself."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", *command] if setpriv else command


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cluster_id() -> str:
    """What `kafka-storage random-uuid` prints: a UUID in URL-safe base64, not starting with '-'."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):
            return value


def missing_requirements() -> str | None:
    """Why no private node can run here, or None."""
    if shutil.which("java") is None:
        return "java is not installed"
    if not any(LIBS.glob("kafka_2.13-*.jar")):
        return f"no Kafka jars in {LIBS} (run deploy/local/kafka.sh start once)"
    return None


@dataclass(frozen=True)
class SaslSsl:
    """A SASL_SSL listener: SCRAM-SHA-512 users (created when the storage is formatted) and
    the server certificate of deploy/local/tls.sh in `tls`."""

    tls: Path
    users: dict[str, str]


class KafkaNode:
    def __init__(self, directory: Path, sasl_ssl: SaslSsl | None = None) -> None:
        self.directory = directory
        self.sasl_ssl = sasl_ssl
        self.port = free_port()
        self.secure_port = free_port()
        self.controller_port = free_port()
        self.config = directory / "server.properties"
        self.log4j = directory / "log4j2.properties"
        self.log = directory / "kafka.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()
        self._format()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        return f"127.0.0.1:{self.secure_port}"

    def _listeners(self, host: str) -> list[str]:
        listeners = f"PLAINTEXT://{host}:{self.port},CONTROLLER://{host}:{self.controller_port}"
        protocols = "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        if self.sasl_ssl is None:
            secure: list[str] = []
        else:
            listeners += f",SASL_SSL://{host}:{self.secure_port}"
            protocols += ",SASL_SSL:SASL_SSL"
            scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            keystore = self.sasl_ssl.tls / "server-bundle.pem"
            secure = [
                "sasl.enabled.mechanisms=SCRAM-SHA-512",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
                "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                f"listener.name.sasl_ssl.ssl.keystore.location={keystore}",
            ]
        return [
            f"listeners={listeners}",
            f"advertised.listeners={listeners}",
            f"listener.security.protocol.map={protocols}",
            *secure,
        ]

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        host = "127.0.0.1"
        self.config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={host}:{self.controller_port}",
                    *self._listeners(host),
                    "inter.broker.listener.name=PLAINTEXT",
                    "controller.listener.names=CONTROLLER",
                    f"log.dirs={self.directory / 'data'}",
                    "auto.create.topics.enable=false",
                    "num.partitions=3",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # After a kill the old registration blocks the restarted broker until
                    # its session expires (9 s by default).
                    "broker.session.timeout.ms=1500",
                    "broker.heartbeat.interval.ms=300",
                    "num.network.threads=2",
                    "num.io.threads=2",
                    "background.threads=2",
                    "",
                ]
            )
        )
        self.log4j.write_text(LOG4J)

    def _java(self, *args: str, heap: str = "-Xmx384m") -> list[str]:
        return [
            "java",
            heap,
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            f"-Dkafka.logs.dir={self.directory}",
            "-cp",
            f"{LIBS}/*",
            *args,
        ]

    def _format(self) -> None:
        users = self.sasl_ssl.users if self.sasl_ssl else {}
        scram = [
            part
            for name, password in users.items()
            for part in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]
        subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id(),
                "-c",
                str(self.config),
                *scram,
                heap="-Xmx128m",
            ),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "already running"
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                die_with_parent(self._java("kafka.Kafka", str(self.config))),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def wait_ready(self, seconds: float = 60) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"Kafka node exited; see {self.log}:\n{self.tail()}")
            probe = await asyncio.create_subprocess_exec(
                sys.executable,
                str(READY),
                self.bootstrap,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await probe.wait() == 0:
                return
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"Kafka node not ready in {seconds}s:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        """Like a crash or a pulled cable: no controlled shutdown."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
