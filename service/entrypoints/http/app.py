"""The HTTP app: the customer-groups API (routes.py, members.py) when this process serves
it, and health, metrics and docs always."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from faststream.specification import Specification, get_asyncapi_html
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.adapters.kafka.result_waiter import ResultWaiter
from service.adapters.postgres import outbox_store
from service.bootstrap import ALL_ROLES, Container, Role, lifespan
from service.config import Settings
from service.entrypoints.asyncapi import specification
from service.entrypoints.http.middleware import RequestMetrics
from service.entrypoints.http.routes import install
from service.tracing import Tracing

VERSION = "1.0.0"
PROBE_TIMEOUT_S = 2.0
# Probes and scrapes every few seconds would drown the requests worth a trace.
UNTRACED_PATHS = "/health/live,/health/ready,/metrics"


def create_app(
    settings: Settings,
    roles: frozenset[Role] = ALL_ROLES,
    on_started: Callable[[], None] = lambda: None,
    on_fatal: Callable[[BaseException], None] = lambda _: None,
    tracing: Tracing | None = None,
) -> FastAPI:
    """HTTP_ENABLED=false leaves out the API as a `--role` list without http does; health,
    metrics and docs are served all the same. `on_started` runs once everything has started;
    `on_fatal` when a part of the service cannot go on. `tracing` is shut down, its last
    spans exported, when the app stops: uvicorn ends the process on a signal right after."""
    tracing = tracing or Tracing()
    if not settings.http_enabled:
        roles = roles - {Role.HTTP}

    @contextlib.asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            async with lifespan(settings, roles, on_fatal, tracing) as container:
                app.state.container = container
                app.state.results = None
                app.state.asyncapi = None
                if Role.HTTP not in roles:
                    on_started()
                    yield
                    return
                waiter = ResultWaiter(settings)
                await waiter.start()
                app.state.results = waiter
                on_started()
                try:
                    yield
                finally:
                    await waiter.stop()
        finally:
            tracing.shutdown()

    app = FastAPI(
        title="customer-groups",
        description=(
            "Customer groups per organization: reads from PostgreSQL, writes as Kafka commands."
        ),
        version=VERSION,
        lifespan=app_lifespan,
    )
    if Role.HTTP in roles:
        install(app, max_body_bytes=settings.command_max_bytes)
    # Outermost, so it also times and counts what the other middleware answers.
    app.add_middleware(RequestMetrics)
    if tracing.enabled:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=tracing.provider, excluded_urls=UNTRACED_PATHS
        )

    @app.get("/health/live", tags=["ops"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["ops"])
    async def ready(request: Request) -> Response:
        container: Container = request.app.state.container
        problems = await _problems(container, request.app.state.results)
        details = await _details(container)
        if problems:
            body = {"status": "unavailable", "problems": problems, "details": details}
            return JSONResponse(body, status_code=503)
        return JSONResponse({"status": "ready", "details": details})

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        container: Container = request.app.state.container
        await _refresh_gauges(container)
        return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/docs/asyncapi.json", tags=["docs"])
    async def asyncapi_json(request: Request) -> Response:
        return Response(_asyncapi(request).to_json(), media_type="application/json")

    @app.get("/docs/asyncapi", tags=["docs"], response_class=HTMLResponse)
    async def asyncapi_html(request: Request) -> HTMLResponse:
        return HTMLResponse(get_asyncapi_html(_asyncapi(request), try_it_out_path=None))

    return app


def _asyncapi(request: Request) -> Specification:
    state = request.app.state
    if getattr(state, "asyncapi", None) is None:
        state.asyncapi = specification(state.container.settings, VERSION)
    document: Specification = state.asyncapi
    return document


async def _problems(container: Container, results: ResultWaiter | None) -> dict[str, str]:
    """Why this instance should not get traffic now; empty when it should."""

    async def postgres() -> str | None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await container.pool.fetchval("SELECT 1")
        except Exception as error:
            return f"unreachable: {type(error).__name__}: {error}"
        return None

    async def kafka() -> str | None:
        return None if await container.broker.ping(PROBE_TIMEOUT_S) else "unreachable"

    postgres_problem, kafka_problem = await asyncio.gather(postgres(), kafka())
    problems = dict(container.health.problems)
    if postgres_problem:
        problems["postgres"] = postgres_problem
    if kafka_problem:
        problems["kafka"] = kafka_problem
    if container.subscriber is not None:
        consumer = getattr(container.subscriber, "consumer", None)
        if consumer is None or not consumer.assignment():
            problems["consumer"] = "no command partitions assigned"
    if results is not None and not results.running:
        problems["results"] = "the command result reader stopped"
    return problems


async def _details(container: Container) -> dict[str, int]:
    """What an operator should look at that is no reason to withhold traffic: events set
    aside (parked) wait for a decision (`customer-groups outbox parked`)."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            return {"outbox_parked": await outbox_store.parked_count(container.pool)}
    return {}


async def _refresh_gauges(container: Container) -> None:
    """Gauges that are cheap to read at scrape time; a failed read keeps the last value."""
    metrics = container.metrics
    metrics.pipeline_stopped.set("pipeline" in container.health.problems)
    if container.relay is not None:
        metrics.relay_leading.set(container.relay.leading)
    # Under an external publisher no row is ever marked published: the whole outbox would
    # look like backlog, so the publisher's own lag is the one to watch.
    if container.settings.outbox_publisher == "relay":
        with contextlib.suppress(Exception):
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                metrics.observe_backlog(await outbox_store.backlog(container.pool))
    consumer = getattr(container.subscriber, "consumer", None)
    if consumer is None:
        return
    metrics.consumer_lag.clear()
    # A rebalance may take a partition away between the two reads; the next scrape shows it.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            for partition in consumer.assignment():
                # highwater is known once a fetch returned; the position is then known too.
                end = consumer.highwater(partition)
                if end is not None:
                    lag = end - await consumer.position(partition)
                    metrics.consumer_lag.labels(partition.topic, str(partition.partition)).set(lag)
