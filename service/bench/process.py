"""The service under test, run as a separate process the way it runs in production."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from service.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_env(
    settings: Settings, http_port: int, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment that points a service process at the bench's database and topics;
    tracing stays off unless `extra` turns it on."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {
        **inherited,
        **settings.environment(),
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(http_port),
        "LOG_LEVEL": "WARNING",
        **(extra or {}),
    }


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in kB; empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


class ServiceProcess:
    """`customer-groups run` in a child process; tracks its peak memory while it lives."""

    def __init__(
        self,
        settings: Settings,
        roles: tuple[str, ...] = (),
        environment: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self._env = service_env(settings, self.port, environment)
        self._roles = roles
        self._process: asyncio.subprocess.Process | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix="customer-groups-bench-", suffix=".log", delete=False
        )
        self.peak_rss_kb = 0
        self.peak_children_kb = 0

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def log_path(self) -> str:
        return self._log.name

    async def start(self, wait_s: float = 90) -> None:
        role_args = [arg for role in self._roles for arg in ("--role", role)]
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service.entrypoints.cli",
            "run",
            *role_args,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        self._sampler = asyncio.create_task(self._sample())
        deadline = asyncio.get_running_loop().time() + wait_s
        while not await self._ready():
            if self._process.returncode is not None:
                raise RuntimeError(f"the service exited at start; its log:\n{self.log_tail()}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"the service was not ready in {wait_s}s:\n{self.log_tail()}")
            await asyncio.sleep(0.2)

    async def _ready(self) -> bool:
        answer = await self._get("/health/ready")
        return answer is not None and b" 200 " in answer.split(b"\r\n", 1)[0]

    async def _get(self, path: str) -> bytes | None:
        """The process's whole HTTP answer to GET `path`, or None if it gave none."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return None
        try:
            writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            await writer.drain()
            async with asyncio.timeout(5):
                return await reader.read()
        except (OSError, TimeoutError):
            return None
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _sample(self) -> None:
        """VmHWM already holds the peak; sampling VmRSS also catches any child processes."""
        while self._process is not None and self._process.returncode is None:
            self._observe()
            await asyncio.sleep(0.1)

    def _observe(self) -> None:
        own = memory_kb(self.pid)
        self.peak_rss_kb = max(self.peak_rss_kb, own.get("VmHWM", 0), own.get("VmRSS", 0))
        extra = sum(memory_kb(child).get("VmRSS", 0) for child in children(self.pid))
        self.peak_children_kb = max(self.peak_children_kb, extra)

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    @property
    def peak_rss_mb(self) -> float:
        return (self.peak_rss_kb + self.peak_children_kb) / 1024

    async def stop(self, wait_s: float = 20, keep_log: bool = False) -> None:
        try:
            await self._stop(wait_s)
        finally:
            self._close_log(keep_log)

    def _close_log(self, keep: bool) -> None:
        self._log.close()
        if not keep:
            Path(self._log.name).unlink(missing_ok=True)

    async def _stop(self, wait_s: float) -> None:
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._observe()
        process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(wait_s):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)

    async def kill(self) -> None:
        """kill -9, as a crash or an OOM kill would end it."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    def signal(self, number: int) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.send_signal(number)

    async def metric(self, name: str) -> float | None:
        """An unlabelled sample of the process's /metrics, or None."""
        answer = await self._get("/metrics")
        for line in (answer or b"").decode(errors="replace").splitlines():
            sample, _, value = line.partition(" ")
            if sample == name:
                return float(value)
        return None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = Path(self._log.name).read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Services:
    """The service under test as a phase drives it: the settings its commands go by, and its
    processes (none when the bench drives a service already running)."""

    settings: Settings
    processes: list[ServiceProcess]

    def cpu_seconds(self) -> float | None:
        """CPU time all service processes have used so far."""
        if not self.processes:
            return None
        return sum(process.cpu_seconds() for process in self.processes)
