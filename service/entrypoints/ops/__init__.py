"""The operations subcommands of `customer-groups`: each parses its arguments, calls the
work in service.ops, and prints."""

from service.entrypoints.ops import dlq, members, outbox, replay, republish, send, state, tail
from service.entrypoints.ops.cli import Subparsers


def register(subparsers: Subparsers) -> None:
    for tool in (replay, republish, state, dlq, send, tail, outbox, members):
        tool.register(subparsers)
