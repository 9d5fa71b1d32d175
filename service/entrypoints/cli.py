"""The `customer-groups` command: run the service, migrate, and the operations tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import sys
from collections.abc import Callable, Sequence

import asyncpg
import uvicorn

from service.adapters.postgres.db import create_pool, migrate
from service.bootstrap import ALL_ROLES, Role
from service.config import Settings
from service.entrypoints import bench, chaos, ops, schemas
from service.entrypoints.http.app import create_app
from service.observability import configure_logging
from service.tracing import tracing_from_environment

Command = Callable[[argparse.Namespace, Settings], int]


def _run(args: argparse.Namespace, settings: Settings) -> int:
    roles = frozenset(Role(r) for r in args.role) if args.role else ALL_ROLES
    fatal: list[BaseException] = []

    def stop(error: BaseException) -> None:
        fatal.append(error)
        server.should_exit = True

    try:
        tracing = tracing_from_environment()
    except ValueError as error:
        print(f"customer-groups: {error}", file=sys.stderr)
        return 2
    app = create_app(settings, roles, on_started=_settle_heap, on_fatal=stop, tracing=tracing)
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    server = uvicorn.Server(config)
    # Each batch allocates thousands of short-lived objects; at Python's default threshold
    # the cycle collector ran so often that it took a large share of the consumer's CPU
    # (docs/benchmark.md).
    gc.set_threshold(10_000, 10, 10)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve())
    # A supervisor restarts a process that exits non-zero; what it did not commit comes again.
    return 0 if server.started and not fatal else 1


def _settle_heap() -> None:
    """What startup built lives as long as the process: frozen, full collections no longer
    walk it, and their pauses of the service are much shorter (docs/benchmark.md)."""
    gc.collect()
    gc.freeze()


def _migrate(args: argparse.Namespace, settings: Settings) -> int:  # noqa: ARG001
    async def go() -> list[str]:
        pool = await create_pool(settings, min_size=1)
        try:
            return await migrate(pool)
        finally:
            await pool.close()

    try:
        applied = asyncio.run(go())
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
        # A refused password, an untrusted certificate, TLS required: said, not a traceback.
        print(
            f"error: PostgreSQL (DATABASE_URL) refused or out of reach: {error!r}", file=sys.stderr
        )
        return 1
    print("applied: " + (", ".join(applied) if applied else "nothing, schema is up to date"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="customer-groups",
        description="Customer groups service: Kafka commands in, PostgreSQL state, events out.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run the service (consumer, outbox relay and HTTP server) in the foreground",
        description="Run the service until Ctrl-C. Configuration comes from the environment.",
    )
    run.add_argument(
        "--role",
        action="append",
        choices=[r.value for r in Role],
        help="run only these parts (repeatable); default: all of them",
    )
    run.set_defaults(handler=_run)

    migrate = sub.add_parser(
        "migrate",
        help="apply database migrations and exit",
        description="Apply the SQL migrations not applied yet; safe to run from many instances.",
    )
    migrate.set_defaults(handler=_migrate)

    # Subcommands that live in their own modules.
    ops.register(sub)
    bench.register(sub)
    chaos.register(sub)
    schemas.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    handler: Command = args.handler
    return handler(args, settings)


if __name__ == "__main__":
    sys.exit(main())
