"""The HTTP server: health, metrics and docs; the customer-groups API is mounted from api.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.bootstrap import ALL_ROLES, Container, Role, lifespan
from service.config import Settings


def create_app(settings: Settings, roles: frozenset[Role] = ALL_ROLES) -> FastAPI:
    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with lifespan(settings, roles) as container:
            app.state.container = container
            yield

    app = FastAPI(
        title="customer-groups",
        description="Customer groups per organization: reads from PostgreSQL, writes via Kafka.",
        version="1.0.0",
        lifespan=app_lifespan,
    )

    @app.get("/health/live", tags=["ops"])
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/health/ready", tags=["ops"])
    async def ready(request: Request) -> Response:
        container: Container = request.app.state.container
        problems = dict(container.health.problems)
        try:
            await container.pool.fetchval("SELECT 1", timeout=2)
        except Exception as error:
            problems["postgres"] = f"{type(error).__name__}: {error}"
        if problems:
            return JSONResponse({"status": "unavailable", "problems": problems}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", tags=["ops"])
    async def metrics(request: Request) -> Response:
        container: Container = request.app.state.container
        return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
