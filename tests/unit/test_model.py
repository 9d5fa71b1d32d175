from __future__ import annotations

import unicodedata
from datetime import UTC, datetime

import pytest

from service.domain.commands import GROUP_ID
from service.domain.model import Group, format_time, group_json, name_key, new_group_id


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
    group = Group("grp_1", "org_42", "VIP", None, "p", 3, at, at, at, customer_count=12)
    assert group_json(group) == {
        "id": "grp_1",
        "organization_id": "org_42",
        "name": "VIP",
        "description": None,
        "platform_id": "p",
        "customer_count": 12,
        "version": 3,
        "created_at": "2026-01-02T00:00:00.000000Z",
        "updated_at": "2026-01-02T00:00:00.000000Z",
        "deleted_at": "2026-01-02T00:00:00.000000Z",
    }
    assert not group.is_live


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("VIP", "vip"),
        ("ΟΔΟΣ", "οδος"),  # capital sigma, and a final sigma in lower case
        ("ὈΔΌΣ", "ὀδός"),
        ("Straße", "STRASSE"),
        ("İstanbul", "i\u0307stanbul"),  # dotted capital I folds to i and a combining dot
        ("Caf\u00e9", "CAFE\u0301"),  # composed and decomposed
        ("\u017f\u0301", "\u015b"),  # long s, folded, then composed with its accent
        ("\u1fb7", "\u1fbc\u0342"),  # U+0345 folds to iota: needs decomposing first
        ("\ufb01", "FI"),  # a ligature folds to its letters
    ],
)
def test_names_that_differ_only_by_case_or_composition_share_a_key(one: str, other: str) -> None:
    assert name_key(one) == name_key(other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ("İstanbul", "istanbul"),  # full case folding, not the Turkic one
        ("VIP", " VIP"),
        ("Vip", "V.I.P."),
        ("x²", "x2"),  # compatibility forms stay apart: they read differently
        ("\uff36\uff29\uff30", "VIP"),  # full-width
    ],
)
def test_names_that_read_differently_keep_their_own_keys(one: str, other: str) -> None:
    assert name_key(one) != name_key(other)


def test_a_key_is_composed_folded_and_its_own_key() -> None:
    for name in ("ΟΔΟΣ", "Straße", "İ", "CAFE\u0301", "ǰ", "\u1fbc\u0342", "Été 🎉"):
        key = name_key(name)
        assert unicodedata.is_normalized("NFC", key)
        assert name_key(key) == key
        # The migration marks keys it must set aside with capitals no key can hold.
        assert not any("A" <= c <= "Z" for c in key)
