"""The instances of a chaos run and the faults injected into them and their servers."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import asyncpg

from service.bench.process import ServiceProcess
from service.config import Settings

# The project's own scripts restart the local servers; a checkout has them, a wheel does not.
LOCAL_SCRIPTS = Path(__file__).resolve().parents[2] / "deploy" / "local"
# A supervisor's restart delay: a killed instance comes back this much later.
RESTART_DELAY_S = 1.0


class Cluster:
    """Consumer+HTTP instances sharing the command partitions, and relay processes of which
    one leads."""

    def __init__(self, settings: Settings, instances: int, relays: int, seed: int) -> None:
        self.settings = settings
        self.consumers = [self._consumer() for _ in range(instances)]
        self.relays = [ServiceProcess(settings, ("relay",)) for _ in range(relays)]
        self.retired: list[ServiceProcess] = []
        self._random = random.Random(seed)

    def _consumer(self) -> ServiceProcess:
        return ServiceProcess(self.settings, ("consumer", "http"))

    @property
    def processes(self) -> list[ServiceProcess]:
        return [*self.consumers, *self.relays]

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.processes))

    async def stop(self) -> None:
        await asyncio.gather(*(p.stop() for p in [*self.processes, *self.retired]))

    async def inject(self, kind: str) -> str:
        """Inject one fault and return once it is over (the instance restarted, the process
        resumed, the server back); what it did, in words."""
        return str(await getattr(self, f"_{kind}")())

    async def _kill(self) -> str:
        victim = self._random.choice(self.consumers)
        await victim.kill()
        self.consumers.remove(victim)
        self.retired.append(victim)
        await asyncio.sleep(RESTART_DELAY_S)
        replacement = self._consumer()
        await replacement.start()
        self.consumers.append(replacement)
        return f"kill -9 of consumer pid {victim.pid}, replaced by pid {replacement.pid}"

    async def _add_instance(self) -> str:
        added = self._consumer()
        await added.start()
        self.consumers.append(added)
        return f"consumer pid {added.pid} added"

    async def _pause_relay(self) -> str:
        leader = await self._leader()
        # Longer than a standby waits to try the lock again, so one takes over meanwhile.
        pause_s = 3 * self.settings.relay_lock_retry_s + 2
        leader.signal(signal.SIGSTOP)
        await asyncio.sleep(pause_s)
        leader.signal(signal.SIGCONT)
        return f"SIGSTOP of the relay leader pid {leader.pid} for {pause_s:g}s"

    async def _leader(self) -> ServiceProcess:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for relay in self.relays:
                if await relay.metric("customer_groups_relay_leading") == 1:
                    return relay
            await asyncio.sleep(0.5)
        raise RuntimeError("no relay leads")

    async def _kill_backend(self) -> str:
        conn = await asyncpg.connect(self.settings.database_url.get_secret_value())
        try:
            ended = await conn.fetchval(
                """
                SELECT count(pg_terminate_backend(a.pid))
                FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory' AND l.granted
                  AND a.datname = current_database() AND a.pid <> pg_backend_pid()
                """
            )
        finally:
            await conn.close()
        return f"{ended} database backends holding advisory locks terminated"

    async def _kafka_restart(self) -> str:
        stopped = await _script("kafka.sh", "stop")
        if "stopped" not in stopped:
            # Another checkout's broker, or one given by KAFKA_BOOTSTRAP_SERVERS: not ours.
            raise RuntimeError(f"kafka.sh did not stop the broker: {stopped.strip()}")
        await _script("kafka.sh", "start")
        return "Kafka broker stopped and started"

    async def _postgres_restart_fast(self) -> str:
        await _script("postgres.sh", "restart", "fast")
        return "PostgreSQL restarted (fast shutdown)"

    async def _postgres_restart_immediate(self) -> str:
        await _script("postgres.sh", "restart", "immediate")
        return "PostgreSQL restarted (immediate shutdown: no checkpoint, crash recovery)"


async def _script(name: str, *args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(LOCAL_SCRIPTS / name),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed: {text}")
    return text


def available(kind: str) -> bool:
    """Faults on the servers need the project's scripts and the servers they started."""
    if kind.startswith("postgres_restart"):
        return (LOCAL_SCRIPTS / "postgres.sh").exists()
    if kind == "kafka_restart":
        return (LOCAL_SCRIPTS / "kafka.sh").exists()
    return True


def describe(kind: str, at_ms: int, what: str, took_s: float) -> dict[str, Any]:
    return {"kind": kind, "at_ms": at_ms, "what": what, "took_s": round(took_s, 2)}
