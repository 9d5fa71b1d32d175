"""The advisory locks' key spaces.

Every advisory lock here takes PostgreSQL's two-int4 form, the first key naming the space,
so locks of different kinds cannot collide whatever their second keys hash to. (The
one-bigint form is a separate key space, so it cannot collide with these either.)"""

from __future__ import annotations

from typing import Final

# Second key: hashtext(organization_id). Two organizations may share a hash; they then
# only wait for each other.
ORGANIZATIONS: Final = 1
RELAY: Final = 2
MIGRATIONS: Final = 3
