"""An overall deadline for HTTP requests made with httpx.

httpx's timeouts are per operation: a read that gets one byte in time starts the clock again,
so a server that dribbles a reply one byte every half second holds a request (and the outbox
lease behind it) for as long as it likes. Here every socket operation of a request gets at most
the time left until the request's deadline, and none starts after it: the connect, the TLS
handshake, writing the request and reading the status line, headers and body.

    client = deadline_client(10)     # or enforce_deadlines(client) on a fresh one
    with deadline(10.0):
        client.post(...)        # raises httpx.ReadTimeout (or Connect/Write) at 10 s at the latest

The deadline is per thread (a context variable), so threads sharing the client do not share it.
It is enforced by wrapping httpcore's network backend (the one seam httpcore offers for I/O),
on the client's own transports, before they open any connection.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import ssl
import time
from typing import Any, Iterable, Iterator

import httpcore
import httpx

log = logging.getLogger(__name__)

_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("timeback_request_deadline", default=None)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Requests made by this thread inside the block end `seconds` from now at the latest."""
    token = _deadline.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def time_left() -> float | None:
    """Seconds until this thread's deadline (≤ 0 once it passed), or None without one."""
    end = _deadline.get()
    return None if end is None else end - time.monotonic()


def _bounded(timeout: float | None, expired: type[Exception]) -> float | None:
    """`timeout` cut to what is left of the deadline; `expired` raised once nothing is left."""
    left = time_left()
    if left is None:
        return timeout
    if left <= 0:
        raise expired("the request's overall deadline passed")
    return left if timeout is None else min(timeout, left)


class _Stream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _Stream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def deadline_client(timeout: float) -> httpx.Client:
    """A TLS-verifying `httpx.Client` whose requests honour `deadline()` (a transport's own)."""
    client = httpx.Client(timeout=timeout, verify=True)
    enforce_deadlines(client)
    return client


def enforce_deadlines(client: httpx.Client) -> int:
    """Make `client` honour `deadline()`; returns how many connection pools now do. Call it
    before the client's first request (existing connections keep the unbounded backend)."""
    transports: list[Any] = [client._transport, *client._mounts.values()]  # noqa: SLF001 - see module doc
    wrapped = bounded = 0
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if isinstance(backend, httpcore.NetworkBackend) and not isinstance(backend, _Backend):
            pool._network_backend = _Backend(backend)  # type: ignore[union-attr]
            wrapped += 1
        bounded += isinstance(getattr(pool, "_network_backend", None), _Backend)
    if bounded == 0:
        log.warning("timeback: this httpx/httpcore has no seam for an overall request deadline")
    return wrapped

