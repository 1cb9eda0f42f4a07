"""stack.embedded.free_port: ports for the servers a stack starts, outside the ephemeral range
that outgoing connections draw their source ports from."""

from __future__ import annotations

import socket

import pytest

from stack import embedded
from stack.embedded import PORT_FLOOR, ephemeral_ports, free_port, port_is_free, promise_ports


def test_a_free_port_lies_below_the_ephemeral_range_and_can_be_bound() -> None:
    low, high = ephemeral_ports()
    assert 0 < low <= high <= 65535
    ports = {free_port() for _ in range(20)}
    for port in ports:
        assert PORT_FLOOR <= port < low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))
    assert len(ports) > 1  # picked at random: two stacks rarely pick the same


def test_a_port_something_listens_on_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_promised", set())
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listening:
        listening.bind(("127.0.0.1", free_port()))
        listening.listen()
        taken = listening.getsockname()[1]
        other = next(port for port in range(PORT_FLOOR, ephemeral_ports()[0]) if port_is_free(port))
        picks = iter([taken, taken, other])
        monkeypatch.setattr(embedded._ports, "randrange", lambda low, high: next(picks))

        assert free_port() == other


def test_a_port_handed_out_or_promised_is_not_handed_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_promised", set())
    low, _high = ephemeral_ports()
    handed = free_port()  # its server has not bound it yet
    free = (port for port in range(PORT_FLOOR, low) if port != handed and port_is_free(port))
    configured, left = next(free), next(free)
    promise_ports([configured])  # configured for a server that starts later
    picks = iter([handed, configured, left])
    monkeypatch.setattr(embedded._ports, "randrange", lambda low, high: next(picks))

    assert free_port() == left


def test_when_no_pick_below_the_range_is_free_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    handed = free_port()
    monkeypatch.setattr(embedded._ports, "randrange", lambda low, high: handed)

    port = free_port()

    assert port != handed
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", port))
