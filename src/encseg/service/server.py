"""The HTTP server side of the service: uvicorn with guards against slow and greedy connections.

uvicorn (h11) has a keep-alive timeout but no deadline for a request's line and headers, and any
byte a client sends resets its idle timer, so a client that trickles a header one byte at a time
holds a connection forever. `GuardedH11Protocol` adds what the service needs at the connection
level: at most `max_connections` open at once (the next one is answered 503 and closed), and a
request line + headers that must be complete `header_timeout_s` after the connection opens or the
previous response ends (else 408 and close). Body timeouts live in the app's middleware.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from encseg.service.settings import ServiceConfig

SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                                 b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                                 b"form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


def raw_response(status: int, reason: str, message: str, extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A complete HTTP/1.1 response with a JSON body and `Connection: close`, for the protocol level."""
    body = json.dumps({"detail": message}).encode()
    head = [f"HTTP/1.1 {status} {reason}".encode(), b"content-type: application/json",
            f"content-length: {len(body)}".encode(), b"connection: close"]
    head += [k + b": " + v for k, v in SECURITY_HEADERS + list(extra)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a connection cap and a header deadline (settings from `guards`)."""

    guards: ServiceConfig | None = None  # None: read ServiceConfig.from_env() (uvicorn workers)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cls = type(self)
        if cls.guards is None:
            cls.guards = ServiceConfig.from_env()
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        g = self.guards
        assert g is not None
        if len(self.connections) > g.max_connections:
            transport.write(raw_response(503, "Service Unavailable", "too many open connections; retry shortly",
                                         [(b"retry-after", str(g.retry_after_s).encode())]))
            transport.close()
            return
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        assert self.guards is not None
        self._header_timer = self.loop.call_later(self.guards.header_timeout_s, self._header_deadline)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        waiting = self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)
        if not waiting:
            return  # a request is in progress: the app's body timeouts apply from here
        if self.conn.our_state is h11.IDLE and self._has_partial_request():
            self.transport.write(raw_response(408, "Request Timeout", "the request line and headers took too long"))
        self.transport.close()

    def _has_partial_request(self) -> bool:
        try:
            return bool(self.conn.trailing_data[0])
        except Exception:  # noqa: BLE001 - h11 internals; closing quietly is fine
            return False

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 cannot parse, with our headers and a JSON body."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE) and not self.transport.is_closing():
            self.transport.write(raw_response(400, "Bad Request", "invalid HTTP request"))
        self.transport.close()


def guarded_protocol(config: ServiceConfig) -> type[GuardedH11Protocol]:
    """A protocol class bound to `config` (for servers run in this process: tests, one worker)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guards": config})


def uvicorn_options(config: ServiceConfig) -> dict[str, Any]:
    """The uvicorn.Config options that go with `config` (the protocol class is passed separately)."""
    return {
        "timeout_keep_alive": config.keepalive_s,
        "limit_concurrency": config.max_connections + config.max_inflight,  # uvicorn's own 503 backstop
        "h11_max_incomplete_event_size": 16 * 1024,  # request line + headers
        "backlog": 256,
        "access_log": False,
        "server_header": False,
    }
