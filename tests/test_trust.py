"""Trust boundaries, each test written as the attack (receipts, keys, ops endpoints)."""

from __future__ import annotations

import gc
import hashlib
import tracemalloc
from typing import Any

import orjson
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.conftest import chat, eventually, make_config, open_mocks, provider, running
from trioproxy.admission.auth import new_key
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.rawclient import RawClient, RawResponse, request

ALICE, ALICE_BLOCK = new_key("alice")
BOB, BOB_BLOCK = new_key("bob")
ROOT, ROOT_BLOCK = new_key("root")


def _table(block: str, **changes: object) -> dict[str, Any]:
    import tomllib

    table = dict(tomllib.loads(block)["keys"][0])
    table.update(changes)
    return table


KEYS = (
    _table(ALICE_BLOCK),
    _table(BOB_BLOCK, models=["mock-*"]),
    _table(ROOT_BLOCK, admin=True),
)
CHAT = "/v1/chat/completions"


def _auth(key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {key}")]


async def _receipt(url: str, ref: str, key: str, status: int = 200) -> RawResponse:
    """GET the receipt, waiting out the 202s while it is signed."""
    with trio.fail_after(10):
        while True:
            response = await request(url, "GET", f"/v1/signature/{ref}", headers=_auth(key))
            if response.status != 202 or status == 202:
                assert response.status == status, response.body
                return response
            await trio.sleep(0.02)


async def test_a_client_chosen_request_id_cannot_replace_anothers_receipt() -> None:
    """The spoof: bob sends alice's completion id as x-request-id with a model he may
    not use. Before, the 403 was signed and stored under that id, replacing hers."""
    async with running(keys=KEYS) as (gw, _):
        mine = await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(ALICE))
        receipt_id = mine.headers[b"x-trioproxy-receipt-id"].decode()
        original = (await _receipt(gw.url, receipt_id, ALICE)).json()
        completion = original["receipt"]["completion_id"]
        assert receipt_id.startswith("rcpt_") and len(receipt_id) == 5 + 32
        for ref in (completion, receipt_id):
            spoof = await request(
                gw.url, "POST", CHAT, chat("gpt-forbidden"), [*_auth(BOB), ("x-request-id", ref)]
            )
            assert spoof.status == 403
            assert b"x-trioproxy-receipt-id" not in spoof.headers  # no receipt for a 403
        for ref in (completion, receipt_id):
            assert (await _receipt(gw.url, ref, ALICE)).json() == original
        assert gw.app.receipts is not None and gw.app.receipts.statistics().stored == 1


async def test_answers_the_gateway_gives_itself_get_no_receipt() -> None:
    async with running(keys=KEYS) as (gw, _):
        for path, body, auth, status in [
            (CHAT, chat("mock-t2-i0"), [], 401),
            (CHAT, chat("gpt-x"), _auth(BOB), 403),
            ("/v1/nope", chat("mock-t2-i0"), _auth(ALICE), 404),
            (CHAT, {"model": "m"}, _auth(ALICE), 400),
        ]:
            response = await request(gw.url, "POST", path, body, auth)
            assert response.status == status
            assert b"x-trioproxy-receipt-id" not in response.headers
        assert gw.app.receipts is not None and gw.app.receipts.statistics().stored == 0


async def test_a_receipt_is_read_only_with_its_key_or_an_admin_key() -> None:
    """The read across tenants: bob asks for alice's receipt by its id and by the
    upstream's completion id; he gets the answer an unknown id gets."""
    async with running(keys=KEYS) as (gw, _):
        mine = await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(ALICE))
        receipt_id = mine.headers[b"x-trioproxy-receipt-id"].decode()
        document = (await _receipt(gw.url, receipt_id, ALICE)).json()
        unknown = await _receipt(gw.url, "rcpt_" + "0" * 32, BOB, status=404)
        for ref in (receipt_id, document["receipt"]["completion_id"]):
            theirs = await _receipt(gw.url, ref, BOB, status=404)
            assert theirs.body == unknown.body  # no existence oracle
            assert (await _receipt(gw.url, ref, ROOT)).json() == document
        anonymous = await request(gw.url, "GET", f"/v1/signature/{receipt_id}")
        assert anonymous.status == 401


async def test_a_receipt_binds_key_status_and_both_models() -> None:
    async with open_mocks(Fault()) as (mock,):
        providers = (provider("p", mock, aliases={"fast": "mock-t4-i0"}, models=["mock-*"]),)
        async with running(keys=KEYS, providers=providers) as (gw, _):
            response = await request(gw.url, "POST", CHAT, chat("fast"), _auth(ALICE))
            ref = response.headers[b"x-trioproxy-receipt-id"].decode()
            receipt = (await _receipt(gw.url, ref, ALICE)).json()["receipt"]
            assert (receipt["key"], receipt["status"], receipt["model"]) == ("alice", 200, "fast")
            assert receipt["upstream_model"] == "mock-t4-i0" and receipt["truncated"] is False
            limited = await request(gw.url, "POST", CHAT, chat("mock-e429"), _auth(ALICE))
            assert limited.status == 429  # relayed whole, as the upstream sent it
            ref = limited.headers[b"x-trioproxy-receipt-id"].decode()
            relayed = (await _receipt(gw.url, ref, ALICE)).json()["receipt"]
            assert (relayed["status"], relayed["truncated"]) == (429, False)  # complete


async def test_verifiers_of_attested_inference_can_check_our_signature() -> None:
    async with running() as (gw, _):
        body = orjson.dumps(chat("mock-t3-i0"))
        response = await request(gw.url, "POST", CHAT, body)
        ref = response.headers[b"x-trioproxy-receipt-id"].decode()
        with trio.fail_after(10):
            while (
                answer := await request(gw.url, "GET", f"/v1/signature/{ref}?signing_algo=ed25519")
            ).status == 202:
                await trio.sleep(0.02)
        doc = answer.json()
        assert set(doc) == {"text", "signature", "signing_address", "signing_algo"}
        expected = f"{hashlib.sha256(body).hexdigest()}:{hashlib.sha256(response.body).hexdigest()}"
        assert doc["text"] == expected and doc["signing_algo"] == "ed25519"
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(doc["signing_address"]))
        public.verify(bytes.fromhex(doc["signature"]), doc["text"].encode())  # raises if forged
        other = await request(gw.url, "GET", f"/v1/signature/{ref}?signing_algo=ecdsa")
        assert other.status == 400


async def test_ops_endpoints_need_an_admin_key_when_keys_exist() -> None:
    async with running(keys=KEYS, debug_endpoints=True) as (gw, _):
        for path in ("/metrics", "/debug/state", "/debug/records"):
            assert (await request(gw.url, "GET", path)).status == 401
            tenant = await request(gw.url, "GET", path, headers=_auth(ALICE))
            assert tenant.status == 403 and tenant.json()["error"]["code"] == "admin_key_required"
            assert (await request(gw.url, "GET", path, headers=_auth(ROOT))).status == 200
        assert (await request(gw.url, "GET", "/healthz")).status == 200
        bare = await request(gw.url, "GET", "/readyz")
        assert bare.status == 200 and bare.json() == {"ready": True}  # probes need no key
        detailed = (await request(gw.url, "GET", "/readyz", headers=_auth(ROOT))).json()
        assert set(detailed) == {"ready", "unhealthy_pools", "providers", "redis"}
        assert detailed["redis"] == "off"  # no redis_url
        assert (await request(gw.url, "GET", "/v1/attestation/key")).status == 200  # public


async def test_debug_records_are_paginated_and_bounded() -> None:
    async with running(debug_endpoints=True) as (gw, recorder):
        for _ in range(5):
            await request(gw.url, "POST", CHAT, chat("mock-t1-i0"))
        await recorder.wait_for(5)
        first = (await request(gw.url, "GET", "/debug/records?limit=2")).json()
        assert (len(first["records"]), first["total"], first["next"]) == (2, 5, 2)
        last = (await request(gw.url, "GET", "/debug/records?offset=4&limit=5000")).json()
        assert (len(last["records"]), last["next"]) == (1, None)
        bad = await request(gw.url, "GET", "/debug/records?limit=x")
        assert bad.status == 400


# -- hostile input and web pages ---------------------------------------------------
async def test_a_web_page_cannot_drive_an_open_gateway() -> None:
    """The browser attack: any page a local user visits POSTs text/plain (a CORS
    'simple request', no preflight) to 127.0.0.1:8080, or reaches it through a
    DNS-rebinding name."""
    body = orjson.dumps(chat("mock-t2-i0"))
    async with running(cors_origins=("https://app.example",)) as (gw, _):
        assert gw.mock is not None
        page = [("origin", "https://evil.example"), ("content-type", "text/plain")]
        refused = await request(gw.url, "POST", CHAT, body, page)
        assert refused.status == 403 and refused.json()["error"]["code"] == "origin_not_allowed"
        plain = await request(gw.url, "POST", CHAT, body, [("content-type", "text/plain")])
        assert plain.status == 415
        rebound = await request(gw.url, "POST", CHAT, body, [("host", "attacker.example:8080")])
        assert rebound.status == 421
        assert gw.mock.statistics().requests_total == 0  # nothing reached the upstream
        listed = [("origin", "https://app.example")]
        preflight = await request(gw.url, "OPTIONS", CHAT, None, listed)
        assert preflight.status == 204
        assert preflight.headers[b"access-control-allow-origin"] == b"https://app.example"
        allowed = await request(gw.url, "POST", CHAT, body, listed)
        assert allowed.status == 200
        assert allowed.headers[b"access-control-allow-origin"] == b"https://app.example"
        local = await request(gw.url, "POST", CHAT, body, [("host", "localhost:8080")])
        assert local.status == 200


async def test_non_ascii_header_bytes_are_a_400_in_the_dialect_without_a_traceback(
    caplog: Any,
) -> None:
    body = {"model": "mock-t2-i0", "max_tokens": 5, "messages": []}
    async with running() as (gw, _):
        for name, value in (("x-request-id", b"caf\xe9"), ("anthropic-beta", b"\xff")):
            client = await RawClient.connect(gw.url)
            head = (
                b"POST /v1/messages HTTP/1.1\r\nhost: localhost\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n%s: %s\r\n\r\n"
                % (len(orjson.dumps(body)), name.encode(), value)
            )
            await client.stream.send_all(head + orjson.dumps(body))
            response = await client.read_response()
            await client.close()
            assert response.status == 400
            error = response.json()
            assert error["type"] == "error" and "visible ASCII" in error["error"]["message"]
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]


async def test_a_3_mb_model_name_is_refused_before_anything_stores_it() -> None:
    async with running(debug_endpoints=True, access_log=True) as (gw, recorder):
        kept = 0
        for i in range(10):
            if i == 5:  # after a warm-up: what is allocated from here on and still held
                gc.collect()  # garbage (earlier tests', tracebacks of 400s) is not storage
                tracemalloc.start()
            huge = chat("m" * 3_000_000 + str(i))
            response = await request(gw.url, "POST", CHAT, huge)
            assert response.status == 400 and "longer than 256 bytes" in response.body.decode()
        try:
            records = await recorder.wait_for(10)
            assert all(r.model is None for r in records)
            metrics = await request(gw.url, "GET", "/metrics")
            assert len(metrics.body) < 64 * 1024  # no label grew
            del huge, response
            gc.collect()
            kept = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert kept < 1_000_000  # not one of the five 3 MB names (the allocator's own
        # fragmentation, which an RSS figure would add, is not storage)


def test_retry_after_is_ascii_digits_or_an_http_date() -> None:
    from trioproxy.upstream.http11 import parse_retry_after

    assert parse_retry_after("7") == 7
    assert parse_retry_after("²") is None  # isdigit() says yes; int() would crash
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past
    assert parse_retry_after("999999") == 3600
    assert parse_retry_after("soon") is None


async def _trickle(url: str, sent: bytes) -> RawClient:
    """A client that sends its head and part of its body, then nothing."""
    client = await RawClient.connect(url)
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
    )
    await client.stream.send_all(head + sent)
    return client


async def test_a_trickled_body_ends_with_408_and_bodies_are_read_a_bounded_number_at_once() -> None:
    """The slow upload: a body that never completes held its task and buffers
    forever (read_timeout=None). Now it gets 408 at body_timeout, and while it
    holds the only body-reading slot, another upload waits for it."""
    async with running(body_timeout=0.5, max_body_reads=1) as (gw, _):
        slow = await _trickle(gw.url, b'{"model": "mock-t1-i0", "mess')
        timed_out = await slow.read_response()
        assert timed_out.status == 408
        assert timed_out.json()["error"]["code"] == "request_timeout"
        await slow.close()
    async with running(body_timeout=10, max_body_reads=1) as (gw, _):
        stats = gw.app.body_reads.statistics
        slow = await _trickle(gw.url, b'{"model": "mock-t1-i0", "mess')
        await eventually(lambda: stats().reading == 1)
        answers: list[RawResponse] = []

        async def upload() -> None:
            answers.append(await request(gw.url, "POST", CHAT, chat("mock-t1-i0")))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            await eventually(lambda: stats().waiting == 1)  # waits for the slow body's slot
            assert not answers
            await slow.close()  # the slow client leaves: its slot is free
        assert answers[0].status == 200


async def test_sighup_revokes_a_key_in_the_running_gateway() -> None:
    """A key is compromised: removing it from the file and reloading refuses it at
    once, while a stream it already had finishes; the other keys are untouched."""
    from trioproxy.config import Config

    async with running(keys=KEYS) as (gw, _):
        client = await RawClient.connect(gw.url)
        await client.send_request("POST", CHAT, chat("mock-t20-i20"), _auth(ALICE))
        assert (await client.response_head())[0] == 200
        new = Config(**{**gw.app.config.options(), "keys": KEYS[1:]})
        assert gw.app.reload(new) == []
        refused = await request(gw.url, "POST", CHAT, chat("mock-t1-i0"), _auth(ALICE))
        assert refused.status == 401
        assert (await request(gw.url, "POST", CHAT, chat("mock-t1-i0"), _auth(BOB))).status == 200
        body = b"".join([c async for _, c in client.body_chunks()])
        assert body.endswith(b"data: [DONE]\n\n")  # the stream in flight finished
        await client.close()


async def test_only_the_public_key_is_readable_without_a_key_under_attestation() -> None:
    """The probe: any path under /v1/attestation/ went to the receipt lookup
    without authentication, with an admin's scope. Only ``/key`` exists there."""
    async with running(keys=KEYS) as (gw, _):
        mine = await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(ALICE))
        receipt_id = mine.headers[b"x-trioproxy-receipt-id"].decode()
        await _receipt(gw.url, receipt_id, ALICE)
        receipts = gw.app.receipts
        assert receipts is not None
        lookups: list[str] = []
        lookup = receipts.lookup

        async def counted(ref: str, owner: str | None) -> Any:
            lookups.append(ref)
            return await lookup(ref, owner)

        receipts.lookup = counted  # type: ignore[method-assign]
        unknown_route = await request(gw.url, "GET", "/v1/nothing-here")
        for path in (
            f"/v1/attestation/{receipt_id}",
            f"/v1/attestation/../signature/{receipt_id}",
            "/v1/attestation/",
        ):
            probe = await request(gw.url, "GET", path)
            assert probe.status == 404 and b"text_signature" not in probe.body
            assert probe.json()["error"]["code"] == unknown_route.json()["error"]["code"]
        assert lookups == []
        key = await request(gw.url, "GET", "/v1/attestation/key")
        assert key.status == 200 and key.json()["public_key_pem"]


async def test_a_new_key_given_an_old_name_owns_nothing_of_the_old_keys() -> None:
    """The operator revokes alice's key and gives a new tenant a key named
    "alice". Before, receipts and usage belonged to the name: the new tenant
    read the old one's receipts and inherited its all-time usage."""
    old, old_block = new_key("alice")
    new, new_block = new_key("alice")
    async with running(keys=(_table(old_block),)) as (gw, _):
        mine = await request(gw.url, "POST", CHAT, chat("mock-t3-i0"), _auth(old))
        receipt_id = mine.headers[b"x-trioproxy-receipt-id"].decode()
        document = (await _receipt(gw.url, receipt_id, old)).json()
        usage = await request(gw.url, "GET", "/v1/usage", None, _auth(old))
        assert usage.json()["all_time"]["requests"] == 1
        gw.app.reload(make_config(keys=(_table(new_block),)))
        for ref in (receipt_id, document["receipt"]["completion_id"]):
            assert (await _receipt(gw.url, ref, new, status=404)).status == 404
        usage = await request(gw.url, "GET", "/v1/usage", None, _auth(new))
        assert usage.json()["key"] == "alice"
        assert usage.json()["all_time"]["requests"] == 0
        assert document["receipt"]["key"] == "alice"
        assert document["receipt"]["key_id"] == hashlib.sha256(old.encode()).hexdigest()[:16]
