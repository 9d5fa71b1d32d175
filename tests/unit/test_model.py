from __future__ import annotations

from datetime import UTC, datetime

from service.domain.commands import GROUP_ID
from service.domain.model import Group, format_time, group_json, new_group_id


def test_generated_group_ids_fit_the_client_pattern_and_sort_by_time() -> None:
    ids = [new_group_id(ms) for ms in (0, 1, 1_700_000_000_000, 1_700_000_000_001, 2**48 - 1)]
    assert all(GROUP_ID.fullmatch(i) and len(i) == 30 for i in ids)
    assert ids == sorted(ids)
    assert new_group_id(5) != new_group_id(5)


def test_times_are_rfc3339_utc_with_microseconds() -> None:
    assert format_time(datetime(2026, 11, 22, 10, 30, 0, 123456, tzinfo=UTC)) == (
        "2026-11-22T10:30:00.123456Z"
    )
    assert format_time(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000000Z"
    for fraction, text in ((5, "000005"), (100_000, "100000"), (999_999, "999999")):
        at = datetime(1999, 12, 31, 23, 59, 59, fraction, tzinfo=UTC)
        assert format_time(at) == f"1999-12-31T23:59:59.{text}Z"


def test_group_json_has_exactly_the_contract_fields() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    group = Group("grp_1", "org_42", "VIP", None, "p", 3, at, at, at)
    assert group_json(group) == {
        "id": "grp_1",
        "organization_id": "org_42",
        "name": "VIP",
        "description": None,
        "platform_id": "p",
        "version": 3,
        "created_at": "2026-01-02T00:00:00.000000Z",
        "updated_at": "2026-01-02T00:00:00.000000Z",
        "deleted_at": "2026-01-02T00:00:00.000000Z",
    }
    assert not group.is_live
