"""Projects the customer groups into SQLite and keeps them there.

    python examples/sqlite_projection.py --bootstrap-servers 127.0.0.1:9092 groups.db

The first run bootstraps from the state topic; later runs resume from the feed's committed
position, because they pass the versions the database holds. Each batch of changes is
committed to SQLite before the feed's position is, so a crash in between only makes the
next run read a few changes again, which the versions then drop."""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
from pathlib import Path

from customer_groups_client import Change, Feed, Topics

SCHEMA = """
CREATE TABLE IF NOT EXISTS customer_groups (
    id              TEXT PRIMARY KEY,
    organization_id TEXT NOT NULL,
    name            TEXT NOT NULL,
    description     TEXT,
    customer_count  INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0
);
"""

UPSERT = """
INSERT INTO customer_groups
    (id, organization_id, name, description, customer_count, version, updated_at, deleted)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    name = excluded.name, description = excluded.description,
    customer_count = excluded.customer_count, version = excluded.version,
    updated_at = excluded.updated_at, deleted = excluded.deleted
"""


def apply(db: sqlite3.Connection, change: Change) -> None:
    if change.group is None:  # a tombstone: only the version of the deletion is known
        db.execute(
            "UPDATE customer_groups SET deleted = 1, version = coalesce(?, version) WHERE id = ?",
            (change.version, change.group_id),
        )
        return
    group = change.group
    db.execute(
        UPSERT,
        (
            group.id,
            group.organization_id,
            group.name,
            group.description,
            group.customer_count,
            group.version,
            group.updated_at.isoformat(),
            int(change.ends_group),
        ),
    )


async def project(servers: str, path: Path, consumer_group: str, topics: Topics) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    versions = dict(db.execute("SELECT id, version FROM customer_groups"))
    async with Feed(
        servers, group_id=consumer_group, topics=topics, known_versions=versions
    ) as feed:
        async for batch in feed.batches():
            for change in batch:
                apply(db, change)
            db.commit()
            await feed.commit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database", type=Path)
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--consumer-group", default="customer-groups-sqlite")
    parser.add_argument("--topic-prefix", default="customer-groups")
    args = parser.parse_args()
    topics = Topics.with_prefix(args.topic_prefix)
    asyncio.run(project(args.bootstrap_servers, args.database, args.consumer_group, topics))


if __name__ == "__main__":
    main()
