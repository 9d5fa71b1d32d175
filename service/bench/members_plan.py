"""What the members phase sends: its groups and its 1,000-id adds."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from service.domain.commands import CUSTOMER_IDS_MAX

IDS_PER_COMMAND = CUSTOMER_IDS_MAX


COMMANDS_PER_GROUP = 10


# Timed adds of each kind, after one of each that is not timed; the kinds take turns going
# first, so a drift over the repetitions weighs on both alike.
ADD_REPETITIONS = 20


# How often the members phase's service runs its pruner, which purges deleted groups'
# members (every 60 s by default): the purge's time is then its own, not mostly the wait
# for the pruner's next round.
PURGE_INTERVAL_S = 1.0


# (organization id, group id)
Group = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Add:
    """One group.customers.add command."""

    command_id: str
    organization_id: str
    group_id: str
    customer_ids: tuple[str, ...]

    def record(self) -> tuple[bytes, bytes]:
        body = {
            "command_id": self.command_id,
            "type": "group.customers.add",
            "organization_id": self.organization_id,
            "group_id": self.group_id,
            "customer_ids": self.customer_ids,
        }
        return self.organization_id.encode(), orjson.dumps(body)
