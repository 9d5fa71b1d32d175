"""Typed client of the customer-groups service: `GroupsClient` sends commands and waits for
their results; `Feed` follows the groups (state topic, then events) into a `GroupView` or a
store of your own."""

from customer_groups_client.client import UNSET, GroupsClient
from customer_groups_client.commands import (
    AddCustomers,
    Command,
    CreateGroup,
    DeleteGroup,
    RemoveCustomers,
    UpdateGroup,
)
from customer_groups_client.feed import Change, Feed, GroupView
from customer_groups_client.models import (
    CustomersChanged,
    Group,
    GroupEvent,
    Membership,
    Rejected,
    Result,
    ResultTimeout,
)
from customer_groups_client.topics import Topics

__all__ = [
    "UNSET",
    "AddCustomers",
    "Change",
    "Command",
    "CreateGroup",
    "CustomersChanged",
    "DeleteGroup",
    "Feed",
    "Group",
    "GroupEvent",
    "GroupView",
    "GroupsClient",
    "Membership",
    "Rejected",
    "RemoveCustomers",
    "Result",
    "ResultTimeout",
    "Topics",
    "UpdateGroup",
]
