"""JSON Schema (draft 2020-12) of every message, generated from the models the service
itself validates and writes with, for consumers in any language: `docs/schemas/`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pydantic import BaseModel

from service.adapters.kafka.events import EVENT_SCHEMA
from service.config import SCHEMAS_BASE, Settings
from service.domain.commands import (
    AddCustomers,
    CreateGroup,
    DeleteGroup,
    RemoveCustomers,
    UpdateGroup,
)
from service.entrypoints.asyncapi import (
    CommandResultSchema,
    GroupEventSchema,
    GroupSchema,
    document,
)
from service.entrypoints.http.app import VERSION

DRAFT = "https://json-schema.org/draft/2020-12/schema"
DIRECTORY = Path("docs") / "schemas"
ASYNCAPI = Path("docs") / "asyncapi.json"

MESSAGES: dict[str, type[BaseModel]] = {
    "command.group.create": CreateGroup,
    "command.group.update": UpdateGroup,
    "command.group.delete": DeleteGroup,
    "command.group.customers.add": AddCustomers,
    "command.group.customers.remove": RemoveCustomers,
    "result": CommandResultSchema,
    EVENT_SCHEMA.removesuffix(".schema.json"): GroupEventSchema,
    "group": GroupSchema,
}


def generate(base: str = SCHEMAS_BASE) -> dict[str, str]:
    """File name → the schema's text, each identified by `base`/its file name."""
    files = {}
    for name, model in MESSAGES.items():
        file = f"{name}.schema.json"
        schema = {"$schema": DRAFT, "$id": f"{base}/{file}", **model.model_json_schema()}
        files[file] = json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return files


def asyncapi() -> str:
    """The AsyncAPI document for the default topics (what docs/asyncapi.json holds)."""
    return document(Settings.model_construct(), VERSION)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "schemas",
        help="write the JSON Schema of every message",
        description=(
            "Write the JSON Schema (draft 2020-12) of each command, the result, the event "
            "value and the group into a directory (default docs/schemas)."
        ),
    )
    parser.add_argument("--directory", type=Path, default=DIRECTORY)
    parser.add_argument("--base", default=SCHEMAS_BASE, help="the URI the $id of each starts with")
    parser.add_argument(
        "--asyncapi", type=Path, default=ASYNCAPI, help="where the AsyncAPI document goes"
    )
    parser.set_defaults(handler=_write)


def _write(args: argparse.Namespace, settings: Settings) -> int:  # noqa: ARG001
    args.directory.mkdir(parents=True, exist_ok=True)
    for file, text in generate(args.base).items():
        (args.directory / file).write_text(text)
        print(args.directory / file)
    args.asyncapi.write_text(asyncapi())
    print(args.asyncapi)
    return 0
