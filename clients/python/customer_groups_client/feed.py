"""Following the groups: the compacted state topic up to its end, then the events topic.

What every subscriber must get right, done once: each change handed over once, in version
order per group, whatever Kafka delivers twice (a relay that re-publishes after a crash
repeats events with the same `ce_id`, and so with a version not newer than the one held)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from customer_groups_client._kafka import Started, partitions_of
from customer_groups_client.models import Group, GroupEvent
from customer_groups_client.topics import Topics

log = logging.getLogger(__name__)

Kind = Literal[
    "snapshot",
    "tombstone",
    "group.created",
    "group.updated",
    "group.deleted",
    "group.customers_added",
    "group.customers_removed",
]
ENDS_GROUP: frozenset[str] = frozenset({"tombstone", "group.deleted"})
_VERSION = "ce_groupversion"


class Change(NamedTuple):
    """One change of one group. `kind` is the event's type; "snapshot" (the group as the
    state topic holds it) or "tombstone" (deleted) while bootstrapping."""

    kind: Kind
    group_id: str
    version: int | None
    group: Group | None  # None for a tombstone; a GroupEvent for an event
    event_id: str | None = None

    @property
    def ends_group(self) -> bool:
        return self.kind in ENDS_GROUP

    @property
    def customer_ids(self) -> list[str]:
        """The ids a membership event changed, in the command's order."""
        group = self.group
        return (group.customer_ids or []) if isinstance(group, GroupEvent) else []

    @property
    def previous(self) -> dict[str, Any] | None:
        """group.updated: the old value of each changed field."""
        return self.group.previous if isinstance(self.group, GroupEvent) else None


@dataclass
class GroupView:
    """The live groups in memory (group id → group), kept by `apply`. With `members=True`
    it keeps each group's member ids too, where it can know them: a group it saw created,
    or that had no members when bootstrapped (the state topic holds counts, not ids, so a
    group bootstrapped with members has `members[id] = None`: unknown). A set is kept only
    across consecutive versions: after a version it did not see, it is unknown too."""

    members_kept: bool = False
    groups: dict[str, Group] = field(default_factory=dict)
    members: dict[str, set[str] | None] = field(default_factory=dict)

    def apply(self, change: Change) -> None:
        group_id = change.group_id
        if change.ends_group or change.group is None:
            self.groups.pop(group_id, None)
            self.members.pop(group_id, None)
            return
        before = self.groups.get(group_id)
        self.groups[group_id] = change.group
        if not self.members_kept:
            return
        if change.kind == "group.created" or (
            change.kind == "snapshot" and change.group.customer_count == 0
        ):
            self.members[group_id] = set()
        elif change.kind == "snapshot" or (
            before is not None and change.group.version != before.version + 1
        ):
            # A change it did not see may have added or removed members.
            self.members[group_id] = None
        elif (known := self.members.get(group_id)) is not None:
            if change.kind == "group.customers_added":
                known.update(change.customer_ids)
            elif change.kind == "group.customers_removed":
                known.difference_update(change.customer_ids)


class Feed(Started):
    """The changes of every group, as an async iterator of `Change`.

    Started, it reads the state topic from its beginning to the end offsets it finds, then
    the events topic; `Change`s not newer than the version held for their group are dropped.
    Its position on the events topic is committed in its consumer group `group_id` (every
    `commit_interval_s`, on `commit()` and on close) once the changes before it were handed
    over; so a restart resumes where it left off.

    - A caller that keeps the groups itself (a database) passes `known_versions` (group id
      → the version it holds): if the consumer group has a committed position, the feed
      resumes there without bootstrapping.
    - Otherwise (memory) it bootstraps, and follows the events from its committed position,
      or, the first time, from `lookback_s` before the bootstrap: an event the relay has on
      the events topic may not be on the state topic yet, since it sends both at once.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        group_id: str,
        topics: Topics | None = None,
        known_versions: Mapping[str, int] | None = None,
        lookback_s: float = 120.0,
        commit_interval_s: float = 1.0,
        max_records: int = 5000,
        **kafka: Any,
    ) -> None:
        self._servers = bootstrap_servers
        self._group_id = group_id
        self._topics = topics or Topics()
        self._sequencer = Sequencer(known_versions)
        self._resume = known_versions is not None
        self._lookback_ms = int(lookback_s * 1000)
        self._commit_interval_s = commit_interval_s
        self._max_records = max_records
        self._kafka = kafka
        self._consumer: AIOKafkaConsumer | None = None
        self._handed: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.bootstrapped = False

    @property
    def skipped(self) -> int:
        """Records that were not messages of the contract (each logged)."""
        return self._sequencer.skipped

    async def start(self) -> None:
        # "earliest" on both consumers: a position reset that races the feed's own seek
        # (aiokafka resets a newly assigned partition in the background) then reads changes
        # again, which their versions drop, where "latest" would skip them.
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            group_id=self._group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._max_records,
            **self._kafka,
        )
        await self._consumer.start()

    async def close(self) -> None:
        if self._consumer is None:
            return
        with contextlib.suppress(Exception):
            await self.commit()
        await self._consumer.stop()
        self._consumer = None

    async def commit(self) -> None:
        """Commits the position after every change handed over so far."""
        if self._consumer is None:
            return
        due = {
            tp: offset for tp, offset in self._handed.items() if self._committed.get(tp) != offset
        }
        if due:
            await self._consumer.commit(due)
            self._committed.update(due)

    def __aiter__(self) -> AsyncIterator[Change]:
        return self.changes()

    async def changes(self) -> AsyncIterator[Change]:
        """Every change, one at a time."""
        async for batch in self.batches():
            for change in batch:
                yield change

    async def batches(self) -> AsyncIterator[list[Change]]:
        """The changes in the batches Kafka delivers them (never empty): a store can apply
        one in a transaction and then `commit()`. A batch counts as handed over when the
        next one is asked for."""
        consumer = self._consumer
        if consumer is None:
            raise RuntimeError("start() the feed first")
        [events, state] = await partitions_of(
            self._servers, self._kafka, self._topics.events, self._topics.state
        )
        committed = {tp: await consumer.committed(tp) for tp in events}
        if self._resume and all(offset is not None for offset in committed.values()):
            consumer.assign(events)
            for tp, offset in committed.items():
                consumer.seek(tp, offset)
        else:
            started_ms = int(time.time() * 1000)
            async for batch in self._snapshot(state):
                yield batch
            # Assigned only now: an assigned partition is fetched in the background from
            # where its position happens to be, before any seek.
            consumer.assign(events)
            await self._seek_events(committed, started_ms - self._lookback_ms)
        self.bootstrapped = True
        last_commit = time.monotonic()
        while True:
            fetched = await consumer.getmany(timeout_ms=1000)
            for tp, records in fetched.items():
                batch = [change for record in records if (change := self._sequencer.event(record))]
                if batch:
                    yield batch
                self._handed[tp] = records[-1].offset + 1
            if time.monotonic() - last_commit >= self._commit_interval_s:
                await self.commit()
                last_commit = time.monotonic()

    async def _seek_events(
        self, committed: Mapping[TopicPartition, int | None], since_ms: int
    ) -> None:
        assert self._consumer is not None
        fresh = [tp for tp, offset in committed.items() if offset is None]
        found, ends = {}, {}
        if fresh:
            # The ends first: a partition with no record since `since_ms` starts at its end
            # as it was before that answer, so a record arriving in between is not skipped.
            ends = await self._consumer.end_offsets(fresh)
            found = await self._consumer.offsets_for_times({tp: since_ms for tp in fresh})
        for tp, offset in committed.items():
            at = found.get(tp)
            start = offset if offset is not None else at.offset if at is not None else ends[tp]
            self._consumer.seek(tp, start)
            self._handed[tp] = start

    async def _snapshot(self, partitions: list[TopicPartition]) -> AsyncIterator[list[Change]]:
        """The state topic, from its beginning up to the end offsets it has now."""
        reader = AIOKafkaConsumer(
            bootstrap_servers=self._servers,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self._max_records,
            **self._kafka,
        )
        await reader.start()
        try:
            reader.assign(partitions)
            ends = await reader.end_offsets(partitions)
            await reader.seek_to_beginning(*partitions)
            remaining = {tp for tp in partitions if ends[tp] > 0}
            while remaining:
                batches = await reader.getmany(*remaining, timeout_ms=1000)
                for tp, records in batches.items():
                    batch = [
                        change
                        for record in records
                        if record.offset < ends[tp] and (change := self._sequencer.state(record))
                    ]
                    if batch:
                        yield batch
                for tp in list(remaining):
                    if await reader.position(tp) >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await reader.stop()


class Sequencer:
    """Turns the records of the state and events topics into `Change`s, each once and in
    version order per group: a record not newer than the version held for its group (a
    re-published event, one the snapshot already holds) gives none, and a deleted group
    never changes again. `versions` holds what the caller already has."""

    def __init__(self, versions: Mapping[str, int] | None = None) -> None:
        self._versions: dict[str, int] = dict(versions or {})
        self._ended: set[str] = set()
        self.skipped = 0  # records that were not messages of the contract

    def state(self, record: ConsumerRecord[bytes, bytes]) -> Change | None:
        if record.key is None:
            return self._skip("a state record without a key")
        group_id = record.key.decode(errors="replace")
        version = _version(record.headers)
        if not self._newer(group_id, version):
            return None
        if record.value is None:
            if group_id not in self._versions:
                self._ended.add(group_id)
                return None  # deleted before this feed knew it: nothing to end
            return self._accept("tombstone", group_id, version, None)
        try:
            group = Group.model_validate_json(record.value)
        except ValidationError:
            return self._skip(f"a state record of {group_id!r} that is not a group")
        return self._accept("snapshot", group_id, version or group.version, group)

    def event(self, record: ConsumerRecord[bytes, bytes]) -> Change | None:
        # The hot path of a feed: one pass over the headers, and a record not newer than
        # the version held is dropped before its value is parsed.
        kind = event_id = raw_version = None
        for name, value in record.headers:
            if name == "ce_type":
                kind = _EVENT_KINDS.get(value)
            elif name == _VERSION:
                raw_version = value
            elif name == "ce_id":
                event_id = value
        key, value = record.key, record.value
        if key is None or kind is None or raw_version is None or not value:
            return self._skip("a record that is not an event of the contract")
        try:
            version = int(raw_version)
        except ValueError:
            return self._skip("an event whose ce_groupversion is not a number")
        group_id = key.decode(errors="replace")
        if not self._newer(group_id, version):
            return None  # a re-published event, or one the snapshot already holds
        try:
            event = GroupEvent.model_validate_json(value)
        except ValidationError:
            return self._skip(f"an event of {group_id!r} whose value is not a group")
        return self._accept(
            kind, group_id, version, event, event_id.decode(errors="replace") if event_id else None
        )

    def _newer(self, group_id: str, version: int | None) -> bool:
        held = self._versions.get(group_id)
        if held is not None and version is not None and version <= held:
            return False
        return group_id not in self._ended

    def _accept(
        self,
        kind: Kind,
        group_id: str,
        version: int | None,
        group: Group | None,
        event_id: str | None = None,
    ) -> Change:
        if version is not None:
            self._versions[group_id] = version
        if kind in ENDS_GROUP:
            self._ended.add(group_id)
        return Change(kind, group_id, version, group, event_id)

    def _skip(self, what: str) -> Change | None:
        self.skipped += 1
        log.warning("skipped %s", what)
        return None


_EVENT_KINDS: dict[bytes, Kind] = {
    b"group.created": "group.created",
    b"group.updated": "group.updated",
    b"group.deleted": "group.deleted",
    b"group.customers_added": "group.customers_added",
    b"group.customers_removed": "group.customers_removed",
}


def _version(headers: Iterable[tuple[str, bytes]]) -> int | None:
    for name, value in headers:
        if name == _VERSION:
            with contextlib.suppress(ValueError):
                return int(value)
            return None
    return None
