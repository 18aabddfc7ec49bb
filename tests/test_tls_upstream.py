"""A real TLS upstream: the mock served over TLS by a certificate of a CA made here.

The gateway verifies upstream certificates against the system's trust store;
``SSL_CERT_FILE`` (OpenSSL's variable) points it at a private CA. Streams relay
byte for byte over TLS, a hang-up closes the TLS connection, and a certificate
the gateway cannot verify is a 502 before any byte, naming the reason.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
import pathlib
import ssl
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import chat, hang_up_latencies, provider, quantile, running, within
from trioproxy.testing.mock_scripts import Fault
from trioproxy.testing.mock_upstream import MockUpstream
from trioproxy.testing.rawclient import RawClient, request

CHAT = "/v1/chat/completions"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificates(tmp: pathlib.Path, host: str) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """A CA, and a server certificate it signs for ``host``: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("trioproxy test CA"))
        .issuer_name(_name("trioproxy test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    names: list[x509.GeneralName] = [x509.DNSName(host)]
    if host == "localhost":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@asynccontextmanager
async def _tls_mock(cert: pathlib.Path, key: pathlib.Path) -> AsyncIterator[MockUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mock = MockUpstream(Fault())
    async with trio.open_nursery() as nursery:
        serve = functools.partial(trio.serve_ssl_over_tcp, host="127.0.0.1")
        listeners = await nursery.start(serve, mock.handle, 0, context)
        mock.host, mock.port = "localhost", listeners[0].transport_listener.socket.getsockname()[1]
        yield mock
        nursery.cancel_scope.cancel()


def _https(mock: MockUpstream) -> dict[str, object]:
    entry = provider("tls", mock)
    entry["base_url"] = f"https://localhost:{mock.port}/v1"
    return entry


async def test_streams_over_tls_are_byte_identical_and_a_hang_up_closes_them(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, cert, key = _certificates(tmp_path, "localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with _tls_mock(cert, key) as mock, running(providers=(_https(mock),)) as (gw, rec):
        mock.record = True
        response = await request(gw.url, "POST", CHAT, chat("mock-t20-i0"))
        assert response.status == 200 and response.body.endswith(b"data: [DONE]\n\n")
        (record,) = await rec.wait_for(1)
        assert record.completion_id is not None
        assert response.body == mock.transcripts[record.completion_id]

        async def first_chunk(client: RawClient) -> None:
            assert (await client.response_head())[0] == 200
            async with aclosing(client.body_chunks()) as chunks:
                await chunks.__anext__()

        latencies = await hang_up_latencies(gw.url, mock, "mock-t2000-i20", first_chunk)
        assert quantile(latencies, 0.5) < within(0.050), latencies
        records = await rec.wait_for(6)
        assert [r.outcome.value for r in records[1:]] == ["client_disconnect"] * 5


@pytest.mark.parametrize("trusted", [False, True])
async def test_an_upstream_certificate_that_does_not_verify_is_a_502_before_any_byte(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, trusted: bool
) -> None:
    """Signed by a CA the gateway does not trust, or trusted but for another
    name: no request is sent, the client gets a 502 that says why."""
    ca, cert, key = _certificates(tmp_path, "localhost" if not trusted else "elsewhere.example")
    if trusted:
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    async with _tls_mock(cert, key) as mock, running(providers=(_https(mock),)) as (gw, rec):
        response = await request(gw.url, "POST", CHAT, chat("mock-t5-i0"))
        assert response.status == 502
        error = response.json()["error"]
        assert error["code"] == "upstream_unreachable"
        assert "CERTIFICATE_VERIFY_FAILED" in error["message"]  # the reason, for the operator
        assert mock.statistics().requests_total == 0
        (record,) = await rec.wait_for(1)
        assert record.outcome.value == "upstream_error"
