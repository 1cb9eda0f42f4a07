"""Where HTTP deliveries may go: never link-local (cloud metadata), non-public only when allowed."""

from __future__ import annotations

import pytest

from services.executor.domain import DeliveryError
from services.executor.senders import Destinations, retry_after


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8222/varz", "https://10.1.2.3/hook", "http://[::1]:80/", "http://localhost/"]
)
async def test_non_public_addresses_are_refused_unless_allowed(url: str) -> None:
    with pytest.raises(DeliveryError) as refused:
        await Destinations(allow_private=False).check(url)
    assert refused.value.permanent
    assert "HERALD_ALLOW_PRIVATE_DESTINATIONS=true" in str(refused.value)

    await Destinations(allow_private=True).check(url)


@pytest.mark.parametrize(
    "url", ["http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/", "http://0.0.0.0/"]
)
async def test_link_local_and_unspecified_addresses_are_never_called(url: str) -> None:
    with pytest.raises(DeliveryError, match="which Herald never calls") as refused:
        await Destinations(allow_private=True).check(url)
    assert refused.value.permanent


async def test_a_public_address_is_fine() -> None:
    await Destinations(allow_private=False).check("https://93.184.215.14/hook")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("30", 30.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_reads_seconds_or_a_date(header: str | None, seconds: float | None) -> None:
    assert retry_after(header) == seconds
