"""A small TCP proxy on 127.0.0.1: the stable address of a service whose container changes.

One thread runs an event loop (selectors) for every connection: under the GIL that passes
more requests per second than a thread per connection, and opens no thread per request.
It passes bytes and knows nothing of HTTP. Its upstream is a (host, port), or the path of a
Unix socket (a service without a network, reached through its run's folder).
"""

from __future__ import annotations

import errno
import selectors
import socket
import threading
from typing import Union
from urllib.parse import urlsplit

from ..errors import Conflict

LOCALHOST = "127.0.0.1"
CHUNK = 1 << 16
DRAIN_WAIT = 10.0  # seconds drain() waits by default for the connections to an upstream

Address = Union[tuple[str, int], str]  # (host, port), or a Unix socket's path


def upstream_of(url: str) -> Address | None:
    """(host, port) of a plain http:// URL a TCP proxy can front, the path of a unix:PATH;
    None for any other."""
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path.startswith("/"):
        return parts.path
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        return None
    return parts.hostname, parts.port or 80


def reachable(url: str, timeout: float = 0.5) -> Address | None:
    """``url``'s upstream (see upstream_of) if this machine can connect there now; else None."""
    target = upstream_of(url) if url else None
    if target is None:
        return None
    try:
        if isinstance(target, str):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                unix.settimeout(timeout)
                unix.connect(target)
        else:
            socket.create_connection(target, timeout=timeout).close()
    except OSError:  # also a path too long for a Unix socket
        return None
    return target


class Proxy:
    """A TCP proxy on 127.0.0.1:``port`` (a free one when None) to ``upstream``, which
    ``switch`` changes: connections made after it go to the new upstream, those open finish
    where they were. ``served[upstream]`` counts the connections passed on: the requests a
    service answered, since its server closes the connection after each answer (HTTP/1.0)."""

    def __init__(self, port: int | None = None, upstream: Address | None = None) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A port a closed proxy left in TIME_WAIT is free again at once; one that listens is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOCALHOST, port or 0))
            sock.listen(128)
        except OSError as e:
            sock.close()
            raise Conflict(
                f"Port {port} on {LOCALHOST} is in use ({e.strerror or e}): another program (or "
                "another service) listens there. Pick another --port, or leave --port out for a "
                "free one; nothing was built."
            ) from None
        sock.setblocking(False)
        self._sock = sock
        self.port: int = sock.getsockname()[1]
        self.upstream = upstream
        self.served: dict[Address, int] = {}
        self._open: dict[Address, int] = {}  # upstream -> connections still open
        self._changed = threading.Condition()
        self._closed = False
        self._unbound = threading.Event()  # the port is free again
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()  # close() wakes the loop through it
        self._sel.register(sock, selectors.EVENT_READ, self._accept)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._links: set[_Link] = set()
        self._thread = threading.Thread(
            target=self._loop, name=f"mlcontainer-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def closed(self) -> bool:
        return self._closed

    def switch(self, upstream: Address) -> Address | None:
        """Send new connections to ``upstream``; the one they went to before."""
        with self._changed:
            old, self.upstream = self.upstream, upstream
        return old

    def drain(self, upstream: Address | None, timeout: float = DRAIN_WAIT) -> bool:
        """Wait until no connection to ``upstream`` is open (up to ``timeout`` s)."""
        if upstream is None:
            return True
        with self._changed:
            return self._changed.wait_for(lambda: not self._open.get(upstream), timeout)

    def close(self) -> None:
        """Stop listening now; connections open finish on their own."""
        self._closed = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        if threading.current_thread() is not self._thread:
            # The port is free once close() returns: a service served again may take it.
            self._unbound.wait(timeout=5)

    # -- the loop (its thread only) -------------------------------------------------------------

    def _loop(self) -> None:
        listening = True
        try:
            while listening or self._links:
                if listening and self._closed:
                    self._sel.unregister(self._sock)
                    self._sock.close()
                    self._unbound.set()
                    listening = False
                    if not self._links:
                        break
                for key, mask in self._sel.select():
                    if key.data is None:
                        self._wake_r.recv(64)
                        continue
                    try:
                        key.data(key.fileobj, mask)
                    except Exception:  # one connection's trouble must not end the others'
                        link = getattr(key.data, "__self__", None)
                        if isinstance(link, _Link):
                            link.close()
        finally:
            for link in list(self._links):
                link.close()
            if listening:
                self._sock.close()
                self._unbound.set()
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _accept(self, sock: socket.socket, mask: int) -> None:
        try:
            client, _ = sock.accept()
        except OSError:
            return  # the client gave up meanwhile
        with self._changed:
            upstream = self.upstream
            if upstream is not None:
                self.served[upstream] = self.served.get(upstream, 0) + 1
                self._open[upstream] = self._open.get(upstream, 0) + 1
        if upstream is None:  # nothing serves yet: refused, as by a closed port
            client.close()
            return
        link = _Link(self, client, upstream)
        self._links.add(link)
        link.start()

    def _ended(self, link: _Link) -> None:
        self._links.discard(link)
        with self._changed:
            self._open[link.upstream] -= 1
            if not self._open[link.upstream]:
                del self._open[link.upstream]
            self._changed.notify_all()


class _Link:
    """One client connection and its connection upstream. Each way has bytes waiting to be
    sent (the reading side pauses until they are) and an end: passed on as a half close, so
    a client that shuts its sending side still gets its answer."""

    def __init__(self, proxy: Proxy, client: socket.socket, upstream: Address) -> None:
        self.proxy, self.upstream = proxy, upstream
        self.client = client
        unix = isinstance(upstream, str)
        self.server = socket.socket(socket.AF_UNIX if unix else socket.AF_INET, socket.SOCK_STREAM)
        for s in (client, self.server):
            s.setblocking(False)
            if s.family != socket.AF_UNIX:  # a Unix socket has no Nagle to turn off
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = False
        self.closed = False
        # per way (keyed by the reading socket): bytes not sent yet, and whether it has ended
        self.pending = {client: b"", self.server: b""}
        self.ended = {client: False, self.server: False}
        self.peer = {client: self.server, self.server: client}
        self.masks: dict[socket.socket, int] = {}

    def start(self) -> None:
        code = self.server.connect_ex(self.upstream)
        if code not in (0, errno.EINPROGRESS):
            self.close()  # the container went away: the client sees the connection close
            return
        self._update()

    def _want(self, sock: socket.socket) -> int:
        if sock is self.server and not self.connected:
            return selectors.EVENT_WRITE  # the connection's completion
        mask = 0
        if self.connected and not self.ended[sock] and not self.pending[sock]:
            mask |= selectors.EVENT_READ
        if self.pending[self.peer[sock]]:
            mask |= selectors.EVENT_WRITE
        return mask

    def _update(self) -> None:
        for sock in (self.client, self.server):
            want, had = self._want(sock), self.masks.get(sock, 0)
            if want == had:
                continue
            sel = self.proxy._sel
            if not had:
                sel.register(sock, want, self._event)
            elif not want:
                sel.unregister(sock)
            else:
                sel.modify(sock, want, self._event)
            self.masks[sock] = want

    def _event(self, sock: socket.socket, mask: int) -> None:
        try:
            if sock is self.server and not self.connected:
                if self.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self.close()
                    return
                self.connected = True
            else:
                if mask & selectors.EVENT_WRITE:
                    self._send(self.peer[sock])
                if mask & selectors.EVENT_READ:
                    self._receive(sock)
        except OSError:  # reset by either side: nothing more can pass
            self.close()
            return
        if self.ended[self.client] and self.ended[self.server] and not any(self.pending.values()):
            self.close()
        elif not self.closed:
            self._update()

    def _receive(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(CHUNK)
        except BlockingIOError:
            return
        if data:
            self.pending[sock] = data
            self._send(sock)
        else:
            self.ended[sock] = True
            self._send(sock)  # passes the end on once nothing waits

    def _send(self, src: socket.socket) -> None:
        """Send what came from ``src`` to its peer; then its end, if it has ended."""
        data, dst = self.pending[src], self.peer[src]
        if data:
            try:
                sent = dst.send(data)
            except BlockingIOError:
                sent = 0
            self.pending[src] = data[sent:]
        if self.ended[src] and not self.pending[src]:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.server):
            if self.masks.get(sock):
                self.proxy._sel.unregister(sock)
            sock.close()
        self.proxy._ended(self)
