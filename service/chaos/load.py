"""A steady mixed load over many organizations: creates, updates, membership adds and
deletes, with some commands sent again (duplicates and replays); every command Kafka did not
acknowledge is sent again until it does, with its own command_id, so none is lost to a fault
of the broker's."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson

from service.bench import kafka_io
from service.config import Settings


@dataclass
class Sent:
    """Every command sent: its first send time (epoch ms) by id, and how many sends."""

    at_ms: dict[str, int] = field(default_factory=dict)
    sends: int = 0
    duplicates: int = 0


class Load:
    def __init__(self, settings: Settings, organizations: list[str], rate: int, seed: int) -> None:
        self._settings = settings
        self._orgs = organizations
        self._rate = rate
        self._random = random.Random(seed)
        self._live: dict[str, list[str]] = {org: [] for org in organizations}
        self._counter = 0
        self._recent: list[tuple[bytes, bytes]] = []
        self._unsent: list[tuple[bytes, bytes]] = []
        # Kafka refused the last send: the due commands wait until then, then go at once.
        self._paused_until = 0.0
        self.sent = Sent()

    def _next(self) -> tuple[bytes, bytes]:
        r = self._random
        if self._recent and r.random() < 0.03:
            self.sent.duplicates += 1
            return r.choice(self._recent)
        org = r.choice(self._orgs)
        live = self._live[org]
        self._counter += 1
        n = self._counter
        body: dict[str, Any] = {"command_id": str(uuid.uuid4()), "organization_id": org}
        roll = r.random()
        if not live or roll < 0.3:
            group_id = f"grp_c{n}"
            live.append(group_id)
            body |= {"type": "group.create", "group_id": group_id, "name": f"G{n}"}
        elif roll < 0.65:
            body |= {"type": "group.update", "group_id": r.choice(live), "description": f"d{n}"}
        elif roll < 0.95:
            group_id = r.choice(live)
            body |= {
                "type": "group.customers.add",
                "group_id": group_id,
                "customer_ids": [f"cus_{n}"],
            }
        else:
            group_id = live.pop(r.randrange(len(live)))
            body |= {"type": "group.delete", "group_id": group_id}
        record = (org.encode(), orjson.dumps(body))
        self._recent = [*self._recent[-200:], record]
        self.sent.at_ms.setdefault(body["command_id"], int(time.time() * 1000))
        return record

    async def run(self, stop: asyncio.Event) -> None:
        """Send at `rate` per second, in 10 ms steps, until `stop` is set and every command
        has been acknowledged."""
        client = kafka_io.producer(self._settings)
        await client.start()
        pending: set[asyncio.Task[None]] = set()
        try:
            started = time.monotonic()
            made = 0
            while not stop.is_set() or pending or self._unsent:
                if not stop.is_set():
                    due = max(int((time.monotonic() - started) * self._rate) - made, 0)
                    made += due
                    self._unsent += [self._next() for _ in range(due)]
                if self._unsent and time.monotonic() >= self._paused_until:
                    batch = list(self._unsent)
                    self._unsent.clear()
                    self.sent.sends += len(batch)
                    task = asyncio.create_task(self._send(client, batch))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(0.01)
        finally:
            await client.stop()

    async def _send(self, client: Any, batch: list[tuple[bytes, bytes]]) -> None:
        try:
            await asyncio.gather(*await kafka_io.send(client, self._settings.topic_commands, batch))
        except Exception:
            # Maybe delivered, maybe not: the same commands again, which the service's
            # processed-commands table makes harmless.
            self._paused_until = time.monotonic() + 1.0
            self._unsent.extend(batch)
