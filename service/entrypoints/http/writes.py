"""A write as the API makes it: a command published on Kafka like any producer's, its result
awaited on the results topic and answered, so every write has the Kafka contract's
idempotency, ordering and events, and nothing but the consumer ever writes a group."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import orjson
from aiokafka.errors import KafkaError
from fastapi import Request, Response

from service.adapters.kafka.result_waiter import ResultWaiter
from service.config import Settings
from service.domain.commands import valid_command_id
from service.domain.errors import InvalidCommand
from service.domain.headers import valid_traceparent
from service.domain.ports import AnyCommand
from service.domain.results import CommandResult
from service.entrypoints.http.deps import container_of, expected_version
from service.entrypoints.http.errors import ApiError, json_response
from service.entrypoints.http.schemas import PREFIX
from service.observability import command_ids
from service.parsing import Invalid, parse_command
from service.spans import ids, send_span

log = logging.getLogger(__name__)


def etag(version: int) -> dict[str, str]:
    return {"ETag": f'"{version}"'}


def group_response(group: dict[str, Any], status_code: int) -> Response:
    return json_response({"customer_group": group}, status_code, etag(group["version"]))


def guarded(fields: dict[str, Any], if_match: str | None) -> dict[str, Any]:
    """The command's fields, with the version If-Match names as its expected_version."""
    if (version := expected_version(if_match)) is not None:
        return {**fields, "expected_version": version}
    return fields


def _command(settings: Settings, fields: dict[str, Any]) -> AnyCommand:
    """The command a producer would send, judged by the consumer's own parser."""
    parsed = parse_command(orjson.dumps(fields), settings.command_max_bytes)
    if isinstance(parsed, Invalid):
        raise ApiError(422, InvalidCommand.error, parsed.details)
    return parsed


async def execute(
    request: Request, organization_id: str, idempotency_key: str | None, fields: dict[str, Any]
) -> CommandResult | str:
    """Publish the command and wait for its result; on timeout, its command_id."""
    container = container_of(request)
    settings = container.settings
    waiter: ResultWaiter = request.app.state.results
    if idempotency_key is not None and not valid_command_id(idempotency_key):
        raise ApiError(422, InvalidCommand.error, "Idempotency-Key must be 1-128 characters")
    command_id = idempotency_key if idempotency_key is not None else str(uuid.uuid4())
    command = _command(
        settings, {"command_id": command_id, "organization_id": organization_id, **fields}
    )
    headers = {"content-type": "application/json"}
    # Checked here as the consumer would: an invalid one is not copied onto the command.
    untraced = request.headers.get("traceparent")
    if untraced is not None and not valid_traceparent(untraced):
        untraced = None
    about = ids(organization_id, command_id, command.group_id)
    correlation_id = str(uuid.uuid4())
    # One deadline for both steps, so that no write waits longer than the setting says.
    deadline = asyncio.get_running_loop().time() + settings.http_command_timeout_s
    try:
        async with waiter.expect(correlation_id) as result:
            # Until Kafka acknowledges the command it may never be queued: a timeout here
            # is a 503, never the 202 that says the command is queued.
            async with asyncio.timeout_at(deadline):
                topic = settings.topic_commands
                with send_span(container.tracing, topic, about, untraced) as traceparent:
                    if traceparent is not None:
                        headers["traceparent"] = traceparent
                    await container.broker.publish(
                        orjson.dumps(command.model_dump(mode="json", exclude_unset=True)),
                        topic,
                        key=organization_id.encode(),
                        headers=headers,
                        correlation_id=correlation_id,
                    )
            try:
                async with asyncio.timeout_at(deadline):
                    return await result
            except TimeoutError:
                return command.command_id
    except (KafkaError, TimeoutError) as error:
        log.warning(
            "publishing a command failed: %r",
            error,
            extra=command_ids(organization_id, command_id, command.group_id),
        )
        raise ApiError(503, "Service unavailable", "Kafka is unreachable") from error


def respond(outcome: CommandResult | str, success_code: int | None = None) -> Response:
    if isinstance(outcome, str):
        return json_response({"command_id": outcome}, 202)
    if outcome.status == "rejected" or outcome.group is None:
        body = {"code": outcome.code, "error": outcome.error, "details": outcome.details}
        return json_response(body, outcome.code)
    if success_code == 204:
        return Response(status_code=204, headers=etag(outcome.group["version"]))
    response = group_response(outcome.group, outcome.code)
    if outcome.code == 201:
        response.headers["Location"] = f"{PREFIX}/{outcome.group['id']}"
    return response
