"""Every error the API answers, in the Linkit shape: {code, error, details}."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from service.domain.errors import InvalidCommand, Rejected
from service.retry import is_transient

log = logging.getLogger(__name__)


class ApiError(HTTPException):
    """An error response in the Linkit shape: {"code", "error", "details"}.

    An HTTPException because FastAPI turns any other exception raised while it reads the
    body (BodyLimit raises one there) into a 400 of its own."""

    def __init__(self, code: int, error: str, details: Any = None) -> None:
        super().__init__(code, error)
        self.code = code
        self.error = error
        self.details = details

    @classmethod
    def of(cls, reason: Rejected) -> ApiError:
        return cls(reason.code, reason.error, reason.details)


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """PostgreSQL unreachable (or shedding load) is a 503 for reads, as Kafka is for writes."""
    try:
        yield
    except Exception as error:
        if not is_transient(error):
            raise
        log.warning("a read from PostgreSQL failed: %r", error)
        raise ApiError(503, "Service unavailable", "PostgreSQL is unreachable") from error


def _describe(problem: Any) -> str:
    if problem["type"] == "json_invalid":
        return "Invalid JSON"
    if tuple(problem["loc"]) == ("body",):
        if problem["type"] == "missing":
            return "A JSON body is required"
        if problem["type"] == "string_unicode":
            return "Field names must be valid Unicode text, without lone surrogates"
        return "The body must be a JSON object"
    where = ".".join(str(part) for part in problem["loc"][1:])
    return f"{where}: {problem['msg']}"


def _error(
    code: int, error: str, details: Any = None, headers: Mapping[str, str] | None = None
) -> Response:
    return json_response(
        {"code": code, "error": error, "details": details}, code, dict(headers or {})
    )


def error_response(error: ApiError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if error.code == 401 else None
    return _error(error.code, error.error, error.details, headers)


async def _api_error(_: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error_response(error)


async def _http_error(_: Request, error: Exception) -> Response:
    """Starlette's and FastAPI's own: unknown path, wrong method, unreadable body."""
    assert isinstance(error, HTTPException)
    phrase = HTTPStatus(error.status_code).phrase
    details = None if error.detail == phrase else error.detail
    return _error(error.status_code, phrase, details, error.headers)


async def _server_error(_: Request, error: Exception) -> Response:  # noqa: ARG001
    return _error(500, "Internal server error")


def _unparsed_body(problem: Any) -> bool:
    # FastAPI parses the body as JSON only when its Content-Type says JSON, and otherwise
    # validates the bytes themselves.
    return tuple(problem["loc"]) == ("body",) and isinstance(problem.get("input"), bytes)


async def _invalid_request(_: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = error.errors()
    if any(_unparsed_body(p) for p in problems):
        return _error(415, "Unsupported media type", "Content-Type must be application/json")
    details = "; ".join(_describe(p) for p in problems)
    return _error(422, InvalidCommand.error, details)


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status_code, headers, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _server_error)
