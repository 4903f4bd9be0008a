"""A Unix-socket relay in front of the real Docker engine, which a test can cut: to the client
it is exactly an engine that stopped answering (a stopped or restarted dockerd, a lost socket),
while the real engine stays up for the rest of the suite."""

from __future__ import annotations

import os
import socket
import tempfile
import threading

ENGINE = "/var/run/docker.sock"


class EngineProxy:
    def __init__(self, engine: str = ENGINE) -> None:
        self.engine = engine
        self.folder = tempfile.mkdtemp(prefix="mlc-engine-proxy-")
        self.path = os.path.join(self.folder, "docker.sock")
        self._server = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> EngineProxy:
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()
        return self

    def _accept(self, server) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # cut
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.engine)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src, dst) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Stop answering: every open connection is closed, new ones are refused."""
        if self._server is not None:
            self._server.close()
            self._server = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def restore(self) -> None:
        """The engine is back, at the same address."""
        self.start()

    def close(self) -> None:
        self.cut()
        try:
            os.rmdir(self.folder)
        except OSError:
            pass
