"""Retrying what may succeed later: which failures are worth it, and how long to wait."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

log = logging.getLogger(__name__)

T = TypeVar("T")

# SQLSTATE classes that say "try again later": connection, resources, operator intervention,
# transaction rollback (serialization, deadlock).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "53", "57", "40")


def backoff(failures: int, first_s: float, max_s: float) -> float:
    """The wait before retry number `failures` (from 1): doubling up to `max_s`, each drawn
    from its upper half at random, so that many instances retrying at once drift apart."""
    ceiling: float = min(first_s * 2 ** (failures - 1), max_s)
    return ceiling * (0.5 + random.random() / 2)


def is_transient(error: BaseException) -> bool:
    # Kafka refuses these for what the record is, so a retry could only refuse it again.
    if isinstance(error, MessageSizeTooLargeError | RecordTooLargeError):
        return False
    if isinstance(error, OSError | TimeoutError | asyncio.TimeoutError | KafkaError):
        return True
    # InternalClientError: asyncpg's protocol state after the server dropped the connection
    # in the middle of an operation (a restart, a terminated backend); a new one will do.
    if isinstance(
        error,
        asyncpg.InterfaceError | asyncpg.PostgresConnectionError | asyncpg.InternalClientError,
    ):
        return True
    if isinstance(error, asyncpg.PostgresError):
        state = getattr(error, "sqlstate", "") or ""
        return state.startswith(_TRANSIENT_SQLSTATE_CLASSES)
    return False


async def retrying(
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    worth_it: Callable[[BaseException], bool] = is_transient,
    on_retry: Callable[[BaseException], None] = lambda _: None,
    first_s: float = 0.1,
    max_s: float = 5.0,
) -> T:
    """Run `operation` until it succeeds or fails in a way not worth retrying (raised)."""
    failures = 0
    while True:
        try:
            return await operation()
        except Exception as error:
            if not worth_it(error):
                raise
            failures += 1
            on_retry(error)
            delay = backoff(failures, first_s, max_s)
            log.warning("%s failed, retrying in %.2fs: %r", what, delay, error)
            await asyncio.sleep(delay)
