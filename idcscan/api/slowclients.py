"""gunicorn's threaded worker, changed so that a connection gets a thread only once its request
head has arrived: slow or idle clients (slowloris) cannot take the threads that serve everyone.

Stock `gthread` waits in its event loop for a connection's first byte, then hands the connection
to a thread, which reads the rest of the head with a blocking socket and no time limit: a client
that sends half a head and waits holds that thread for as long as it likes, and a handful of
them block the API, `/healthz` included. Here the event loop also reads the head, without
blocking, until the blank line that ends it; a head not complete within `HEAD_TIMEOUT_S` or
larger than `MAX_HEAD_BYTES` closes the connection. The bytes read are handed to gunicorn's own
parser, so parsing, limits and the WSGI environment are gunicorn's. Once in a thread, a socket
read or write that stalls longer than `IDLE_TIMEOUT_S` ends the request (werkzeug answers a
stalled body as a client disconnect), so a stalled upload frees its thread too.

In production nginx sits in front (deploy/nginx.conf) and buffers heads with its own timeouts;
this keeps `idcscan api` safe when run alone, as in the embedded mode. Written against gunicorn
23's ThreadWorker (the version pinned in pyproject); the test of slow clients guards it.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

# A request head that has not fully arrived after this long is a slow client: closed.
HEAD_TIMEOUT_S = 10
# gunicorn refuses longer request lines and header fields anyway; this bounds the buffer.
MAX_HEAD_BYTES = 64 * 1024
# Longest pause in reading a body or writing a response, once a thread serves the request.
IDLE_TIMEOUT_S = 60
END_OF_HEAD = b"\r\n\r\n"


class HeadFirstThreadWorker(ThreadWorker):
    """`gthread` whose event loop reads each request head before a thread is involved."""

    def init_process(self) -> None:
        self._heads: dict[TConn, float] = {}  # connections whose head is arriving: deadline
        super().init_process()

    def accept(self, server: Any, listener: Any) -> None:
        if self.cfg.is_ssl:  # the head arrives encrypted; gunicorn's TLS path is left as it is
            super().accept(server, listener)
            return
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        conn = TConn(self.cfg, sock, client, server)  # non-blocking until handed to a thread
        conn.head = bytearray()
        self.nr_conns += 1
        self._await_head(conn)

    def on_client_socket_readable(self, conn: TConn, client: Any) -> None:
        """A kept-alive connection has a next request: its head must arrive in full, too."""
        if self.cfg.is_ssl:
            super().on_client_socket_readable(conn, client)
            return
        with self._lock:
            self.poller.unregister(client)
            try:
                self._keep.remove(conn)
            except ValueError:  # closed by the keep-alive timeout meanwhile
                return
        conn.head = bytearray()
        self._await_head(conn)

    def _await_head(self, conn: TConn) -> None:
        with self._lock:
            self._heads[conn] = time.monotonic() + HEAD_TIMEOUT_S
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read_head, conn))

    def _read_head(self, conn: TConn, client: Any) -> None:
        try:
            data = conn.sock.recv(8192)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away
            self._drop(conn)
            return
        conn.head += data
        if END_OF_HEAD in conn.head:
            with self._lock:
                self.poller.unregister(client)
                del self._heads[conn]
            self._dispatch(conn)
        elif len(conn.head) > MAX_HEAD_BYTES:
            self._drop(conn)

    def _dispatch(self, conn: TConn) -> None:
        conn.init()  # blocking from here on, and the parser on first use
        conn.sock.settimeout(IDLE_TIMEOUT_S)
        conn.parser.unreader.unread(bytes(conn.head))
        conn.head = bytearray()
        future = self.tpool.submit(self.handle, conn)
        self._wrap_future(future, conn)

    def _drop(self, conn: TConn) -> None:
        with self._lock:
            if self._heads.pop(conn, None) is None:
                return
            with contextlib.suppress(KeyError, ValueError, OSError):  # already out of the poller
                self.poller.unregister(conn.sock)
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self) -> None:
        """Called by the event loop about once a second: also close heads that came too slowly."""
        super().murder_keepalived()
        now = time.monotonic()
        with self._lock:
            late = [conn for conn, deadline in self._heads.items() if deadline < now]
        for conn in late:
            self._drop(conn)
