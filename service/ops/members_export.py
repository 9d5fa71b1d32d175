"""`customer-groups members export`: a live group's customer ids, one a line, in order,
streamed from one snapshot."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from service.config import Settings
from service.ops.common import (
    QUIET,
    OpsError,
    Progress,
    chunks,
    database,
)
from service.ops.members import SELECT_LIVE_GROUP, _check_group_id, _no_live_group

Write = Callable[[Sequence[str]], None]


# A deleted group's member rows stay until the pruner purges them: the join keeps them out.
# The primary key (organization_id, group_id, customer_id) serves the order, so the rows
# stream from the index without a sort.
SELECT_MEMBER_IDS = """
SELECT m.customer_id
FROM customer_groups g
JOIN group_members m ON m.organization_id = g.organization_id AND m.group_id = g.id
WHERE g.organization_id = $1 AND g.id = $2 AND g.deleted_at IS NULL
ORDER BY m.customer_id
"""


async def export_members(
    settings: Settings,
    organization: str,
    group_id: str,
    write: Write,
    *,
    progress: Progress = QUIET,
    batch_size: int = 5000,
) -> int:
    """Pass the group's member ids to `write`, in order, a batch at a time; returns how
    many. The group must be live and the organization's."""
    _check_group_id(group_id)
    exported = 0
    # One snapshot: the count the progress bar shows is the rows that follow.
    async with (
        database(settings) as pool,
        pool.acquire() as conn,
        conn.transaction(isolation="repeatable_read", readonly=True),
    ):
        group = await conn.fetchrow(SELECT_LIVE_GROUP, organization, group_id)
        if group is None:
            raise _no_live_group(organization, group_id)
        with progress.task("exporting customers", group["customer_count"]) as step:
            rows = conn.cursor(SELECT_MEMBER_IDS, organization, group_id, prefetch=batch_size)
            async for batch in chunks(rows, batch_size):
                write([row["customer_id"] for row in batch])
                exported += len(batch)
                step(len(batch))
    return exported


@contextlib.contextmanager
def file_writer(path: Path) -> Iterator[Write]:
    """Lines into `path`, which appears (or is replaced) only once all are written: an
    export that fails half way leaves no file that looks complete."""
    try:
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".part"
        )
    except OSError as error:
        raise OpsError(f"cannot write in {path.parent}: {error.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:

            def write(ids: Sequence[str]) -> None:
                out.write("".join(f"{customer_id}\n" for customer_id in ids))

            yield write
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
