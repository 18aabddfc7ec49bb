"""Behind a trusted proxy the client is the one X-Forwarded-For names, read from
the right; its requests in flight are capped as a peer's connections are, and
what a client writes into the header itself is never read."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from tests.conftest import chat, running
from trioproxy.admission.forwarded import MAX_HOPS, ForwardedClients, client_address
from trioproxy.testing.rawclient import RawClient, request

TRUSTED = frozenset({"10.0.0.1", "10.0.0.2"})
CHAT = "/v1/chat/completions"


def _xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"host", b"gw"), *((b"x-forwarded-for", v.encode()) for v in values)]


def test_the_client_is_the_rightmost_address_that_is_not_a_trusted_proxy() -> None:
    assert client_address("10.0.0.1", _xff("203.0.113.7"), TRUSTED) == "203.0.113.7"
    # What the client wrote is left of what its proxy appended: never read.
    spoofed = _xff("198.51.100.9, 203.0.113.7")
    assert client_address("10.0.0.1", spoofed, TRUSTED) == "203.0.113.7"
    # Proxies in a chain are skipped; header lines are one list, in order.
    chain = _xff("198.51.100.9, 203.0.113.7", "10.0.0.2")
    assert client_address("10.0.0.1", chain, TRUSTED) == "203.0.113.7"
    assert client_address("10.0.0.1", _xff(" 2001:db8::1 "), TRUSTED) == "2001:db8::1"


def test_the_header_counts_only_from_a_trusted_peer_and_only_when_it_is_an_address() -> None:
    assert client_address("192.0.2.5", _xff("203.0.113.7"), TRUSTED) == "192.0.2.5"
    assert client_address("10.0.0.1", _xff("unknown"), TRUSTED) == "10.0.0.1"
    assert client_address("10.0.0.1", _xff("203.0.113.7, junk"), TRUSTED) == "10.0.0.1"
    assert client_address("10.0.0.1", _xff(), TRUSTED) == "10.0.0.1"
    assert client_address("10.0.0.1", _xff("10.0.0.2"), TRUSTED) == "10.0.0.1"


def test_a_huge_header_is_read_only_at_its_right_end() -> None:
    huge = ", ".join(["10.0.0.2"] * 100_000)  # ~1 MB of trusted hops, then nothing
    assert client_address("10.0.0.1", _xff("203.0.113.7, " + huge), TRUSTED) == "10.0.0.1"
    near = ", ".join(["10.0.0.2"] * (MAX_HOPS - 1))
    assert client_address("10.0.0.1", _xff("203.0.113.7, " + near), TRUSTED) == "203.0.113.7"


def test_forwarded_clients_are_counted_while_their_requests_last() -> None:
    clients = ForwardedClients(2, TRUSTED)
    peer = ("10.0.0.1", 4000)
    assert clients.take(("192.0.2.5", 1), _xff("203.0.113.7")) is None  # not a proxy's
    assert clients.take(peer, _xff("203.0.113.7")) == "203.0.113.7"
    assert clients.take(peer, _xff("203.0.113.7")) == "203.0.113.7"
    assert clients.take(peer, _xff("198.51.100.1")) == "198.51.100.1"
    try:
        clients.take(peer, _xff("203.0.113.7"))
        raise AssertionError("a third request in flight was counted")
    except Exception as exc:  # Overloaded
        assert getattr(exc, "status", None) == 429
    clients.give_back("203.0.113.7")
    assert clients.take(peer, _xff("203.0.113.7")) == "203.0.113.7"
    for _ in range(2):
        clients.give_back("203.0.113.7")
    clients.give_back("198.51.100.1")
    assert clients.in_flight == {} and clients.refused == 1


async def test_one_client_behind_a_trusted_proxy_cannot_hold_more_than_its_share() -> None:
    """The attack: many streams from one client behind the proxy in front (here,
    the test's own address). Past max_connections_per_ip in flight the next is a
    429 in the route's dialect, also with a spoofed left part of the header;
    another client behind the same proxy is served meanwhile."""
    async with running(trusted_proxies=("127.0.0.1",), max_connections_per_ip=2) as (gw, _):
        async with AsyncExitStack() as held:
            for _ in range(2):  # two long streams of 203.0.113.7, kept open
                client = await RawClient.connect(gw.url)
                held.push_async_callback(client.close)
                await client.send_request(
                    "POST", CHAT, chat("mock-t200-i50"), [("x-forwarded-for", "203.0.113.7")]
                )
                with trio.fail_after(5):
                    assert (await client.response_head())[0] == 200
            for header in ("203.0.113.7", "198.51.100.9, 203.0.113.7"):
                refused = await request(
                    gw.url, "POST", CHAT, chat("mock-t2"), [("x-forwarded-for", header)]
                )
                assert refused.status == 429, refused.body
                assert refused.json()["error"]["code"] == "gateway_overloaded"
            other = await request(
                gw.url, "POST", CHAT, chat("mock-t2"), [("x-forwarded-for", "198.51.100.1")]
            )
            assert other.status == 200
        with trio.fail_after(10):  # the held streams ended: the client may come back
            while gw.app.forwarded.in_flight:
                await trio.sleep(0.01)
        again = await request(
            gw.url, "POST", CHAT, chat("mock-t2"), [("x-forwarded-for", "203.0.113.7")]
        )
        assert again.status == 200


async def test_without_trusted_proxies_the_header_is_not_read() -> None:
    """A client that is no proxy names someone else in the header: nobody is
    counted by it (its own connections are, by the per-peer connection cap)."""
    async with running(max_connections_per_ip=8) as (gw, _):
        client = await RawClient.connect(gw.url)
        try:
            await client.send_request(
                "POST", CHAT, chat("mock-t200-i50"), [("x-forwarded-for", "203.0.113.7")]
            )
            with trio.fail_after(5):
                assert (await client.response_head())[0] == 200
            assert gw.app.forwarded.in_flight == {}
            for _ in range(3):  # one at a time: each another request from the same client
                response = await request(
                    gw.url, "POST", CHAT, chat("mock-t2"), [("x-forwarded-for", "203.0.113.7")]
                )
                assert response.status == 200
        finally:
            await client.close()
