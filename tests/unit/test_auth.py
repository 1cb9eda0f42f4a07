"""Reading the caller's credentials from request metadata (kernel.auth)."""

from __future__ import annotations

import pytest

from kernel.auth import credentials, metadata_dict


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"x-api-key": "hk_123", "x-team-id": "team-1"}, ("hk_123", "team-1")),
        ({"x-api-key": "  hk_123 ", "x-team-id": "team-1"}, ("hk_123", "team-1")),
        ({"x-api-key": "hk_123"}, ("hk_123", None)),
        ({"authorization": "Bearer hk_123"}, ("hk_123", None)),
        ({"authorization": "bearer hk_123"}, ("hk_123", None)),
        ({"authorization": "BEARER hk_123"}, ("hk_123", None)),
        ({"authorization": "Bearer   hk_123  "}, ("hk_123", None)),
        ({"authorization": "Bearer hk_123", "x-team-id": "team-1"}, ("hk_123", "team-1")),
        ({"x-api-key": "", "authorization": "Bearer hk_456"}, ("hk_456", None)),
        ({"x-api-key": "hk_123", "authorization": "Bearer hk_456"}, ("hk_123", None)),
    ],
)
def test_credentials_are_read_in_either_style(
    metadata: dict[str, str], expected: tuple[str | None, str | None]
) -> None:
    assert credentials(metadata) == expected


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"x-team-id": "team-1"},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer    "},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "hk_123"},
        {"x-api-key": ""},
    ],
)
def test_missing_or_unusable_credentials_are_none(metadata: dict[str, str]) -> None:
    assert credentials(metadata) == (None, None)


def test_metadata_keys_are_lowercased_and_binary_values_decoded() -> None:
    metadata = metadata_dict([("X-API-Key", "hk_123"), ("X-Team-ID", b"team-1")])

    assert metadata == {"x-api-key": "hk_123", "x-team-id": "team-1"}
    assert credentials(metadata) == ("hk_123", "team-1")


def test_no_metadata_is_empty() -> None:
    assert metadata_dict(None) == {}
