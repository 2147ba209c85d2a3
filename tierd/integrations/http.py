"""A small HTTP/1.0 server for /metrics whose cost to the host is bounded, whoever connects.

The metrics port is reachable by every local user (loopback by default), and tierd runs as
root.  prometheus_client's own server starts a thread per connection and never times one
out: ~1,100 connections that send half a request each hold ~1,100 descriptors for ever, and
the daemon's next ``open`` fails with EMFILE.  This one serves from a single thread with
``selectors``: at most ``max_conns`` connections (a new one evicts the oldest, so a flood of
idle ones cannot lock a real scrape out for longer than it floods), each with a deadline for
the whole exchange (request and response), a cap on the request's size, and
``Connection: close``.  The daemon loop never waits on it: scrapes render a published
snapshot (tierd.integrations.metrics).
"""

from __future__ import annotations

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_CONNS = 64  # Prometheus scrapes with one connection at a time; a few humans with curl
TIMEOUT = 10.0  # seconds for a whole exchange: a scrape renders in milliseconds
MAX_REQUEST = 8192  # bytes of request line and headers
PATHS = ("/metrics", "/")


class _Conn:
    __slots__ = ("sock", "deadline", "inbuf", "out")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbuf = b""
        self.out: memoryview | None = None  # the response, once the request is complete


def _response(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8",
              head: bool = False) -> bytes:
    hdr = (f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
           "Connection: close\r\n\r\n").encode()
    return hdr if head else hdr + body


class BoundedHTTPServer:
    """Serves ``render()`` (-> (content type, body bytes)) on GET /metrics and GET / from one
    thread.  Binds in the constructor (OSError if it cannot); ``close()`` stops and closes."""

    def __init__(self, host: str, port: int, render: Callable[[], tuple[str, bytes]], *,
                 max_conns: int = MAX_CONNS, timeout: float = TIMEOUT,
                 max_request: int = MAX_REQUEST, clock: Callable[[], float] = time.monotonic) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # not socket.create_server: its errors append "(while attempting to bind ...)"
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(128)
        except BaseException:
            self.sock.close()
            raise
        self.sock.setblocking(False)
        self.render = render
        self.max_conns = max_conns
        self.timeout = timeout
        self.max_request = max_request
        self.clock = clock
        self.server_address = self.sock.getsockname()
        self._conns: dict[socket.socket, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, name="tierd-metrics", daemon=True)
        self._thread.start()

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- the serving thread ------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop:
            try:
                if self._once():
                    return
            except Exception:  # a bug here must not end the endpoint for good
                log.exception("metrics: serving failed")
                time.sleep(0.1)

    def _once(self) -> bool:
        """One wait and what it brought; True when asked to stop."""
        now = self.clock()
        wait = min((c.deadline for c in self._conns.values()), default=now + 1.0) - now
        for key, events in self._sel.select(max(0.0, min(wait, 1.0))):
            if key.fileobj is self.sock:
                self._accept()
            elif key.fileobj is self._wake_r:
                return True
            else:
                conn = self._conns.get(key.fileobj)
                if conn is not None:
                    self._io(conn, events)
        now = self.clock()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self._drop(conn)
        return False

    def _accept(self) -> None:
        for _ in range(self.max_conns):  # bounded work per wake-up
            try:
                sock, _addr = self.sock.accept()
            except BlockingIOError:
                return
            except OSError as e:  # EMFILE/ENFILE: make room rather than spin on the backlog
                log.debug("metrics: accept failed: %s", e)
                self._evict_oldest()
                return
            if len(self._conns) >= self.max_conns:
                self._evict_oldest()
            sock.setblocking(False)
            conn = _Conn(sock, self.clock() + self.timeout)
            self._conns[sock] = conn
            self._sel.register(sock, selectors.EVENT_READ)

    def _evict_oldest(self) -> None:
        if self._conns:
            self._drop(min(self._conns.values(), key=lambda c: c.deadline))

    def _drop(self, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _io(self, conn: _Conn, events: int) -> None:
        try:
            if conn.out is None and events & selectors.EVENT_READ:
                data = conn.sock.recv(4096)
                if not data:
                    self._drop(conn)
                    return
                conn.inbuf += data
                if b"\r\n\r\n" in conn.inbuf or b"\n\n" in conn.inbuf:
                    self._respond(conn, self._answer(conn.inbuf))
                elif len(conn.inbuf) > self.max_request:
                    self._respond(conn, _response("431 Request Header Fields Too Large",
                                                  b"request too large\n"))
            elif conn.out is not None and events & selectors.EVENT_WRITE:
                n = conn.sock.send(conn.out)
                conn.out = conn.out[n:]
                if not conn.out:
                    self._drop(conn)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset by the peer, broken pipe
            self._drop(conn)

    def _respond(self, conn: _Conn, data: bytes) -> None:
        conn.inbuf = b""
        conn.out = memoryview(data)
        self._sel.modify(conn.sock, selectors.EVENT_WRITE)

    def _answer(self, request: bytes) -> bytes:
        line = request.split(b"\n", 1)[0].decode("latin-1").split()
        if len(line) < 2:
            return _response("400 Bad Request", b"bad request\n")
        method, target = line[0], line[1]
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET /metrics\n")
        if target.split("?", 1)[0] not in PATHS:
            return _response("404 Not Found", b"tierd serves /metrics\n")
        try:
            ctype, body = self.render()
        except Exception:  # a collector bug: the scrape fails, the server goes on
            log.exception("metrics: rendering the scrape failed")
            return _response("500 Internal Server Error", b"scrape failed\n")
        return _response("200 OK", body, ctype, head=method == "HEAD")

    # -- stopping ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop serving and close every socket (returns once the thread has ended)."""
        if not self._stop:
            self._stop = True
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            self._thread.join()
        for conn in list(self._conns.values()):
            self._drop(conn)
        self._sel.close()
        for s in (self.sock, self._wake_r, self._wake_w):
            s.close()
