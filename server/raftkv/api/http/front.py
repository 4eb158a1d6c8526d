"""HTTP/1.1 and gRPC on one client port, as etcd serves them (etcd uses cmux).

`etcdctl check datascale` reads `<endpoint>/metrics`, people `curl <endpoint>/health`, and
gRPC clients use the very same endpoint. grpcio cannot share its port, so the member's gRPC
server listens on an internal socket and this front owns the client port:

- it accepts on the event loop and peeks (MSG_PEEK, nothing consumed) at the first bytes;
- a connection opening with the HTTP/2 preface (`PRI * HTTP/2.0`, sent first by every gRPC
  client) is joined to a new connection to the internal gRPC socket and handed to the
  `SplicePump` thread, which moves its bytes both ways with splice(2), outside the event loop;
- anything else is HTTP/1.x, served on the event loop by `conn.serve_connection` and the router.

The gRPC server sees one internal connection per client connection, so HTTP/2 keepalive pings,
streams, flow control and message sizes work end to end unchanged; only `context.peer()` names
the internal socket instead of the client. The internal socket is a Linux abstract unix socket:
nothing is left on disk after a crash, and its name is unique per process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

from raftkv.api.http.conn import serve_connection
from raftkv.api.http.pump import SplicePump
from raftkv.api.http.router import HttpRouter

log = logging.getLogger(__name__)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# No HTTP/1 method starts with these three bytes, so they decide.
_SNIFF = HTTP2_PREFACE[:3]
# A connection that has not said a word in this long is dropped.
SNIFF_TIMEOUT_S = 30.0
BACKLOG = 1024


def internal_grpc_address() -> tuple[str, str]:
    """A fresh abstract unix socket: (grpc target to bind, address for socket.connect)."""
    name = f"raftkv-grpc-{os.getpid()}-{secrets.token_hex(6)}"
    return f"unix-abstract:{name}", "\0" + name


class ClientPortFront:
    """Owns the client listening sockets; see the module docstring."""

    def __init__(self, router: HttpRouter, grpc_address: str, *, max_body_bytes: int) -> None:
        self._router = router
        self._grpc_address = grpc_address
        self._max_body_bytes = max_body_bytes
        self._pump = SplicePump()
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def pump(self) -> SplicePump:
        return self._pump

    async def listen(self, host: str, port: int) -> int:
        """Start accepting on host:port; returns the port (useful when 0 was asked for)."""
        if not self._started:
            self._pump.start()
            self._started = True
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listeners.append(listener)
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)
        return int(listener.getsockname()[1])

    def stop_accepting(self) -> None:
        """Close the listening sockets; open connections go on (gRPC can drain them)."""
        loop = asyncio.get_running_loop()
        for listener in self._listeners:
            loop.remove_reader(listener.fileno())
            listener.close()
        self._listeners.clear()

    async def close(self) -> None:
        """Stop accepting, end HTTP connections and every proxied gRPC connection."""
        self.stop_accepting()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._started:
            await asyncio.to_thread(self._pump.stop)
            self._started = False

    def _accept(self, listener: socket.socket) -> None:
        # Take every pending connection now: one wake-up may carry many.
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. EMFILE: keep serving the connections we have
                log.warning("accepting a client connection failed: %s", error)
                return
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.create_task(self._route(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _route(self, sock: socket.socket) -> None:
        try:
            head = await self._sniff(sock)
        except (OSError, TimeoutError):
            sock.close()
            return
        if head.startswith(_SNIFF):
            await self._to_grpc(sock)
        elif head:
            await self._serve_http(sock)
        else:
            sock.close()

    async def _sniff(self, sock: socket.socket) -> bytes:
        """The first bytes, enough to tell gRPC from HTTP/1 (fewer only at end of stream)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(SNIFF_TIMEOUT_S):
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
            while True:
                head = sock.recv(len(_SNIFF), socket.MSG_PEEK)
                if len(head) >= len(_SNIFF) or not head or not _SNIFF.startswith(head):
                    return head
                # A prefix of "PRI" and no more yet. The socket stays readable while those
                # bytes wait, so poll instead of waiting for readability (which would spin).
                await asyncio.sleep(0.01)

    async def _to_grpc(self, sock: socket.socket) -> None:
        internal = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        internal.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(internal, self._grpc_address)
        except OSError as error:
            log.warning("cannot reach the gRPC server for a client: %s", error)
            internal.close()
            sock.close()
            return
        self._pump.join(sock, internal)

    async def _serve_http(self, sock: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
        except OSError:
            sock.close()
            return
        await serve_connection(reader, writer, self._router, max_body_bytes=self._max_body_bytes)
