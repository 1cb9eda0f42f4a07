"""Calls to another service: NOT_FOUND reads as nothing found, any other failure as its error."""

from __future__ import annotations

import grpc
import pytest

from kernel.clients import found_or_none
from kernel.errors import Unavailable


async def answer(value: str) -> str:
    return value


async def failing(code: grpc.StatusCode) -> str:
    raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="it failed")


async def test_an_answer_is_returned_as_it_is() -> None:
    assert await found_or_none(answer("found")) == "found"


async def test_not_found_reads_as_none() -> None:
    assert await found_or_none(failing(grpc.StatusCode.NOT_FOUND)) is None


async def test_any_other_failure_is_raised_as_the_error_its_status_says() -> None:
    with pytest.raises(Unavailable):
        await found_or_none(failing(grpc.StatusCode.UNAVAILABLE))
