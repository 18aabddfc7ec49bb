"""Request hygiene before anything else reads the request: header bytes, web pages, hosts.

Rules (sans-IO: headers in, a verdict out):
- Every header value holds visible ASCII, space and tab only; anything else is
  a 400 (a name or id made of such bytes would reach logs, labels and stores).
- ``POST`` bodies are JSON: a ``content-type`` other than ``application/json``
  (parameters allowed) is a 415. A web page can send ``text/plain`` across
  origins without a CORS preflight; it cannot send ``application/json``.
- ``Origin``: a request a browser made for a web page. Allowed when the origin
  is listed in ``cors_origins`` (then answered with CORS headers, and a
  preflight ``OPTIONS`` with 204). In open mode (no API keys) any other
  origin is a 403: any page a local user visits could otherwise spend the
  operator's provider credit.
- ``Content-Length`` and ``Transfer-Encoding`` together: a 400 that closes
  the connection (RFC 9112 §6.3). The server let chunked win; a proxy in front
  may have let the length win, and what it took for the next request would be
  answered here (request smuggling).
- ``Host``: in open mode on a loopback bind, the Host must be ``localhost``, a
  loopback address or the bind's host; anything else (a DNS-rebinding name) is
  a 421. A public bind in open mode was allowed explicitly
  (``allow_open_public``) and is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import (
    BadRequest,
    GatewayError,
    MisdirectedRequest,
    OriginRefused,
    UnsupportedMediaType,
)

__all__ = ["Hygiene", "Verdict"]

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_CORS_HEADERS = b"authorization, content-type, x-api-key, anthropic-version, anthropic-beta, x-request-id, x-session-id"
_VISIBLE = frozenset(range(0x20, 0x7F)) | {0x09}


@dataclass(frozen=True, slots=True)
class Verdict:
    """``error`` to answer, else ``preflight`` (answer 204 now), else go on and
    add ``headers`` to the response."""

    error: GatewayError | None = None
    preflight: bool = False
    headers: tuple[tuple[bytes, bytes], ...] = ()


_OK = Verdict()
_CLOSE = ((b"connection", b"close"),)


def _host_name(value: bytes) -> str:
    host = value.decode("ascii").strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Hygiene:
    def __init__(self, open_mode: bool, bind_host: str, cors_origins: tuple[str, ...] = ()) -> None:
        self._open = open_mode
        loopback = bind_host in _LOOPBACK_HOSTS or bind_host.startswith("127.")
        self._hosts = (_LOOPBACK_HOSTS | {bind_host.lower()}) if loopback else None
        self._origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    def check(self, method: str, headers: list[tuple[bytes, bytes]]) -> Verdict:
        origin = host = content_type = None
        framing = 0
        for name, value in headers:
            if not _VISIBLE.issuperset(value):
                shown = name.decode("ascii", "replace")[:40]
                return Verdict(BadRequest(f"header {shown!r} has bytes outside visible ASCII"))
            if name == b"origin":
                origin = value.decode("ascii").rstrip("/").lower()
            elif name == b"host":
                host = value
            elif name == b"content-type":
                if content_type is not None:  # two: which one would the upstream read?
                    return Verdict(UnsupportedMediaType("one content-type header, please"))
                content_type = value
            elif name == b"content-length" or name == b"transfer-encoding":
                framing |= 1 if name == b"content-length" else 2
        if framing == 3:
            return Verdict(
                BadRequest("Content-Length and Transfer-Encoding together"), headers=_CLOSE
            )
        cors: tuple[tuple[bytes, bytes], ...] = ()
        if origin is not None:
            if origin in self._origins:
                cors = ((b"access-control-allow-origin", origin.encode()), (b"vary", b"origin"))
                if method == "OPTIONS":
                    return Verdict(preflight=True, headers=(*cors, *_PREFLIGHT))
            elif self._open:
                return Verdict(
                    OriginRefused(
                        f"requests from web pages ({origin}) are refused: list the origin "
                        "in cors_origins to allow it"
                    )
                )
        hosts = self._hosts if self._open else None
        if hosts is not None and host is not None and _host_name(host) not in hosts:
            return Verdict(MisdirectedRequest("this gateway does not serve that Host"))
        if method == "POST":
            media = (content_type or b"").split(b";", 1)[0].strip().lower()
            if media != b"application/json":
                return Verdict(UnsupportedMediaType("request bodies must be application/json"))
        return Verdict(headers=cors) if cors else _OK


_PREFLIGHT = (
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", _CORS_HEADERS),
    (b"access-control-max-age", b"600"),
)
