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

On an https:// client URL the front peeks at the TLS ClientHello instead (`hello`):

- a client offering only `h2` in ALPN is a gRPC client: its still-encrypted bytes are spliced
  to a second internal socket where the gRPC server itself terminates TLS (in C, without the
  GIL, with the dynamic credentials of `raftkv.transport.tls`). The splice path stays as cheap
  as for plaintext, and gRPC's auth context carries the verified client certificate's common
  name to the servicers, exactly as if the client had connected to gRPC directly. A client
  offering no version at or above `--tls-min-version` gets a protocol_version alert first;
- any other client (ALPN `http/1.1`, none, or both) is an HTTP client: the front terminates
  TLS on the event loop with Python's ssl module, negotiating http/1.1, and serves HTTP/1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl

from raftkv.api.http.conn import serve_connection
from raftkv.api.http.hello import (
    MAX_RECORD,
    PROTOCOL_VERSION_ALERT,
    RECORD_HEADER,
    TLS13,
    ClientHello,
    parse_client_hello,
    record_length,
)
from raftkv.api.http.pump import SplicePump
from raftkv.api.http.router import HttpRouter
from raftkv.transport.tls import ServerTLS

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

    def __init__(
        self,
        router: HttpRouter,
        grpc_address: str,
        *,
        max_body_bytes: int,
        grpc_tls_address: str | None = None,
    ) -> None:
        """`grpc_tls_address`: where the gRPC server terminates TLS (needed by `listen(tls=)`)."""
        self._router = router
        self._grpc_address = grpc_address
        self._grpc_tls_address = grpc_tls_address
        self._max_body_bytes = max_body_bytes
        self._pump = SplicePump()
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False

    @property
    def pump(self) -> SplicePump:
        return self._pump

    async def listen(self, host: str, port: int, tls: ServerTLS | None = None) -> int:
        """Start accepting on host:port (TLS with `tls`); returns the port (useful with 0)."""
        if tls is not None and self._grpc_tls_address is None:
            raise ValueError("a TLS listener needs the gRPC server's TLS address")
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
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener, tls)
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

    def _accept(self, listener: socket.socket, tls: ServerTLS | None) -> None:
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
            route = self._route(sock) if tls is None else self._route_tls(sock, tls)
            task = asyncio.create_task(route)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _route(self, sock: socket.socket) -> None:
        try:
            head = await self._sniff(sock)
        except (OSError, TimeoutError):
            sock.close()
            return
        if head.startswith(_SNIFF):
            await self._to_grpc(sock, self._grpc_address)
        elif head:
            await self._serve_http(sock)
        else:
            sock.close()

    async def _route_tls(self, sock: socket.socket, tls: ServerTLS) -> None:
        try:
            hello = await self._client_hello(sock)
        except (OSError, TimeoutError):
            sock.close()
            return
        if hello is not None and hello.grpc_only:
            if tls.min_version >= ssl.TLSVersion.TLSv1_3 and not hello.offers(TLS13):
                with contextlib.suppress(OSError):
                    sock.send(PROTOCOL_VERSION_ALERT)
                sock.close()
                return
            assert self._grpc_tls_address is not None  # checked by listen()
            await self._to_grpc(sock, self._grpc_tls_address)
        else:
            await self._serve_https(sock, tls)

    async def _client_hello(self, sock: socket.socket) -> ClientHello | None:
        """The ClientHello's offers, peeked (None: not a TLS handshake we can read)."""
        await self._readable(sock)
        async with asyncio.timeout(SNIFF_TIMEOUT_S):
            while True:
                head = sock.recv(MAX_RECORD, socket.MSG_PEEK)
                wanted = record_length(head)
                if not head or (wanted is None and len(head) >= RECORD_HEADER):
                    return None
                if wanted is not None and len(head) >= wanted:
                    return parse_client_hello(head[:wanted])
                # The rest of the hello is still in flight; the socket stays readable meanwhile.
                await asyncio.sleep(0.01)

    async def _readable(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(SNIFF_TIMEOUT_S):
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())

    async def _sniff(self, sock: socket.socket) -> bytes:
        """The first bytes, enough to tell gRPC from HTTP/1 (fewer only at end of stream)."""
        await self._readable(sock)
        async with asyncio.timeout(SNIFF_TIMEOUT_S):
            while True:
                head = sock.recv(len(_SNIFF), socket.MSG_PEEK)
                if len(head) >= len(_SNIFF) or not head or not _SNIFF.startswith(head):
                    return head
                # A prefix of "PRI" and no more yet. The socket stays readable while those
                # bytes wait, so poll instead of waiting for readability (which would spin).
                await asyncio.sleep(0.01)

    async def _to_grpc(self, sock: socket.socket, address: str) -> None:
        internal = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        internal.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(internal, address)
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

    async def _serve_https(self, sock: socket.socket, tls: ServerTLS) -> None:
        """Terminate TLS here (negotiating http/1.1) and serve HTTP/1 on the event loop."""
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024)
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=tls.ssl_context(), ssl_handshake_timeout=SNIFF_TIMEOUT_S
            )
        except (OSError, ssl.SSLError, TimeoutError, ValueError) as error:
            log.debug("TLS handshake with an HTTP client failed: %s", error)
            sock.close()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await serve_connection(reader, writer, self._router, max_body_bytes=self._max_body_bytes)
