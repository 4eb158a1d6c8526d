"""A fault-injecting TCP proxy for the peer links of a local raftkv cluster.

Each member advertises a proxy listener as its peer URL; the listener forwards to the member's
real peer port. A raftkv member sends its Raft messages to a peer over connections it dials
itself (the peer's replies travel on connections the peer dials), so every proxied connection
belongs to one directed link, sender -> receiver. The receiver is the listener; the sender is
found by asking the kernel which member process owns the connection's source port (sock_diag
netlink for the socket's inode, then /proc/<pid>/fd). That is what lets one listener per member
serve per-link faults without giving the members different views of each other's URLs. A
connection whose sender cannot be found (the dialer already gone) is closed, never proxied
without its faults.

Faults, per directed link:
- cut: bytes stop moving both ways on the link's connections (as when packets are lost on a
  real network: TCP keeps the connection, gRPC's keepalive gives up after a few seconds) and
  new connections stall the same way; healing lets the stalled bytes through;
- delay: each chunk is forwarded `delay` seconds after it was read, order kept;
- reset rate: each forwarded chunk resets the connection with this probability (a lossy link as
  the members see it through TCP: broken streams and redials, never corrupted bytes).

The proxy runs its own event loop in a thread, so a busy test loop does not slow the links.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_CHUNK = 65536
_STALL_POLL_S = 0.02


@dataclass
class LinkFaults:
    cut: bool = False
    delay: float = 0.0
    reset_rate: float = 0.0

    @property
    def clean(self) -> bool:
        return not self.cut and not self.delay and not self.reset_rate


@dataclass
class _Target:
    name: str
    upstream_port: int
    server: asyncio.Server


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NO_COOKIE = 0xFFFFFFFF
_ANY_STATE = 0xFFFFFFFF


def _socket_inode(local_port: int, remote_port: int) -> int | None:
    """The inode of the TCP socket 127.0.0.1:local_port -> 127.0.0.1:remote_port.

    Asks the kernel for that one socket over sock_diag netlink (what `ss` uses): tens of
    microseconds, where formatting /proc/net/tcp of a busy machine takes tens of milliseconds.
    The lookup goes through the IPv4 tables, which also hold the dual-stack IPv6 sockets gRPC
    dials IPv4 addresses from.
    """
    loopback = socket.inet_aton("127.0.0.1") + bytes(12)
    sock_id = struct.pack("!HH16s16s", local_port, remote_port, loopback, loopback)
    sock_id += struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE)
    request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, _ANY_STATE)
    request += sock_id
    header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as nl:
        nl.sendto(header + request, (0, 0))
        reply = nl.recv(65536)
    if struct.unpack_from("=H", reply, 4)[0] != _SOCK_DIAG_BY_FAMILY:
        return None  # an error message: no such socket (any more)
    # nlmsghdr (16 bytes), then inet_diag_msg: 4 bytes, the socket id (48), then
    # expires, rqueue, wqueue, uid, inode.
    return struct.unpack_from("=5I", reply, 16 + 4 + 48)[4]


def _owner(inode: int, pids: dict[str, int]) -> str | None:
    link = f"socket:[{inode}]"
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    if os.readlink(f"{fd_dir}/{fd}") == link:
                        return name
    return None


class FaultProxy:
    """Proxies the peer links of named members; see the module docstring."""

    def __init__(self, pids: Callable[[], dict[str, int]], *, seed: int = 0) -> None:
        """`pids` returns the current process ID of every running member, by name."""
        self._pids = pids
        self._random = random.Random(seed)
        self._faults: dict[tuple[str, str], LinkFaults] = {}
        self._targets: dict[str, _Target] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.unidentified = 0  # connections refused because their sender was not found

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    # ---- members -------------------------------------------------------------------------------

    def add_member(self, name: str, upstream_port: int) -> int:
        """Listen for `name`'s peer traffic; returns the port to advertise."""

        async def listen() -> _Target:
            server = await asyncio.start_server(
                lambda r, w: self._accept(name, r, w), "127.0.0.1", 0
            )
            return _Target(name, upstream_port, server)

        target = self._run(listen())
        self._targets[name] = target
        return target.server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            for target in self._targets.values():
                target.server.close()
            # Abort the connections and let their tasks end by themselves (a task cancelled
            # before it started makes asyncio's stream server log an error).
            deadline = time.monotonic() + 5
            while (
                tasks := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            ) and time.monotonic() < deadline:
                for writer in list(self._writers):
                    writer.transport.abort()
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._run(close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # ---- faults (callable from any thread) -----------------------------------------------------

    @property
    def names(self) -> list[str]:
        """Every member the proxy knows: those it listens for and those that dial."""
        return sorted(set(self._targets) | set(self._pids()))

    def set_link(
        self,
        sender: str,
        receiver: str,
        *,
        cut: bool = False,
        delay: float = 0,
        reset_rate: float = 0,
    ) -> None:
        self._faults[(sender, receiver)] = LinkFaults(cut, delay, reset_rate)

    def cut(self, sender: str, receiver: str) -> None:
        """Stop traffic in one direction: `sender`'s messages no longer reach `receiver`."""
        self.set_link(sender, receiver, cut=True)

    def isolate(self, name: str) -> None:
        for other in self.names:
            if other != name:
                self.cut(name, other)
                self.cut(other, name)

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between members of different groups, both ways."""
        sets = [set(g) for g in groups]
        for i, group in enumerate(sets):
            for other in sets[i + 1 :]:
                for a in group:
                    for b in other:
                        self.cut(a, b)
                        self.cut(b, a)

    def heal(self) -> None:
        self._faults.clear()

    def faults(self) -> dict[tuple[str, str], LinkFaults]:
        return {link: f for link, f in self._faults.items() if not f.clean}

    # ---- forwarding ----------------------------------------------------------------------------

    async def _sender_of(self, writer: asyncio.StreamWriter, listen_port: int) -> str | None:
        peer = writer.get_extra_info("peername")
        if not peer:
            return None
        for _ in range(5):  # a member being (re)started may not be listed yet
            inode = _socket_inode(peer[1], listen_port)
            if inode is None:
                return None  # the dialer has already gone
            name = _owner(inode, self._pids())
            if name is not None:
                return name
            await asyncio.sleep(0.02)
        return None

    async def _accept(
        self, receiver: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        target = self._targets[receiver]
        up_writer: asyncio.StreamWriter | None = None
        self._writers.add(writer)
        try:
            listen_port = target.server.sockets[0].getsockname()[1]
            sender = await self._sender_of(writer, listen_port)
            if sender is None:
                # Refused, so that a fault can never leak through; a member redials.
                self.unidentified += 1
                return
            link = (sender, receiver)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target.upstream_port)
            self._writers.add(up_writer)
            sock = up_writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            down = writer.get_extra_info("socket")
            if down is not None:
                down.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pumps = [
                asyncio.create_task(self._pump(link, reader, up_writer, writer)),
                asyncio.create_task(self._pump(link, up_reader, writer, up_writer)),
            ]
            try:
                await asyncio.gather(*pumps)
            finally:
                for pump in pumps:
                    pump.cancel()
        except (OSError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            # Cancelled only by `stop`; ending normally keeps asyncio's stream server from
            # logging the cancellation as an error.
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)

    async def _pump(
        self,
        link: tuple[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        other: asyncio.StreamWriter,
    ) -> None:
        """Copy one direction of a connection, applying the link's faults to every chunk."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)

        async def read() -> None:
            while data := await reader.read(_CHUNK):
                faults = self._faults.get(link)
                due = time.monotonic() + (faults.delay if faults else 0.0)
                await queue.put((due, data))
            await queue.put((0.0, b""))

        async def write() -> None:
            while True:
                due, data = await queue.get()
                while (faults := self._faults.get(link)) is not None and faults.cut:
                    if writer.transport.is_closing():
                        return
                    await asyncio.sleep(_STALL_POLL_S)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if faults is not None and self._random.random() < faults.reset_rate:
                    writer.transport.abort()
                    other.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        reading = asyncio.create_task(read())
        try:
            await write()
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError, ConnectionError):
                await reading
