"""Moving gRPC bytes between the client port and the internal gRPC server, off the event loop.

Every gRPC connection accepted on the client port is joined to a connection to the gRPC
server's internal socket, and its bytes must flow both ways for as long as it lives. Doing that
on the member's event loop would put two Python callbacks per message on the thread that also
runs Raft. Instead one thread moves the bytes for all connections: it waits in epoll (without
the GIL) and moves data with splice(2) from the source socket into a pipe and from the pipe into
the destination socket, so the bytes never enter Python (zero copy). Per wake-up it takes the
GIL once, for a few calls (see `_splice` for why the splices keep it).

Each direction has its own pipe, which is also its flow control: the thread reads from a source
only while that direction's pipe is empty, and waits for the destination to become writable
when it is not, so a slow reader stalls its sender (TCP windows fill) instead of memory. An end
of stream is passed on as a half-close (shutdown(SHUT_WR)), which keeps the pump transparent; a
reset or error on either side closes both.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import select
import socket
import threading
from collections import deque

log = logging.getLogger(__name__)

# The most one splice moves; a pipe holds 64 KiB by default, and a splice never blocks here.
CHUNK = 1 << 20
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK

# splice(2) called through ctypes.PyDLL keeps the GIL, unlike os.splice, which releases and
# re-takes it around the call. A non-blocking splice takes microseconds, but re-taking the GIL
# while the event loop runs Python waits for its switch interval (5 ms): with os.splice a
# single request paid that wait up to four times. Now the thread takes the GIL once per epoll
# wake-up.
_libc = ctypes.PyDLL(None, use_errno=True)
_libc.splice.argtypes = [
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_uint,
]
_libc.splice.restype = ctypes.c_ssize_t


def _splice(src: int, dst: int, count: int) -> int:
    """Move up to `count` bytes; raises BlockingIOError when it would block."""
    n = _libc.splice(src, None, dst, None, count, _FLAGS)
    if n < 0:
        code = ctypes.get_errno()
        if code == errno.EINTR:
            return _splice(src, dst, count)
        if code == errno.EAGAIN:
            raise BlockingIOError()
        raise OSError(code, os.strerror(code))
    return int(n)


# Level-triggered: one splice in and one out per wake-up, no extra call to find the socket
# empty. A socket is watched for reading while its flow can take data, and for writing only
# while a flow waits for room in it (rare: a socket reports room after every ACK).
_IN = select.EPOLLIN | select.EPOLLRDHUP
_OUT = select.EPOLLOUT
_READABLE = _IN | select.EPOLLHUP | select.EPOLLERR
_WRITABLE = _OUT | select.EPOLLHUP | select.EPOLLERR


class _Flow:
    """One direction: bytes read from `src` wait in the pipe until written to `dst`."""

    def __init__(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        self.src = src
        self.dst = dst
        self.from_client = from_client
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.buffered = 0
        self.eof = False  # src sent its end of stream
        self.shut = False  # ... and dst was told (shutdown SHUT_WR)

    def close(self) -> None:
        os.close(self.pipe_r)
        os.close(self.pipe_w)


class _Link:
    """A client connection joined to its gRPC server connection."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.client_fd = client.fileno()
        self.masks = {client.fileno(): _IN, server.fileno(): _IN}
        self.upstream = _Flow(client, server, from_client=True)
        self.downstream = _Flow(server, client, from_client=False)
        self.closed = False

    def flows(self, fd: int) -> tuple[_Flow, _Flow]:
        """(the flow reading from fd, the flow writing to fd)."""
        if fd == self.client_fd:
            return self.upstream, self.downstream
        return self.downstream, self.upstream


class SplicePump:
    """One thread moving bytes for every joined pair of sockets; see the module docstring."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._epoll.register(self._wake_r, select.EPOLLIN)
        self._links: dict[int, _Link] = {}
        self._incoming: deque[_Link] = deque()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="raftkv-grpc-pump", daemon=True)
        # Written by the pump thread only; int updates are atomic under the GIL.
        self.bytes_from_clients = 0
        self.bytes_to_clients = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Close every link and end the thread."""
        self._stopping = True
        self._wake()
        if self._thread.is_alive():
            self._thread.join()
        for link in [*self._links.values(), *self._incoming]:
            self._close(link)
        self._incoming.clear()
        self._epoll.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def join(self, client: socket.socket, server: socket.socket) -> None:
        """Move bytes between two connected sockets until both directions end; owns them now."""
        client.setblocking(False)
        server.setblocking(False)
        self._incoming.append(_Link(client, server))
        self._wake()

    @property
    def connections(self) -> int:
        return len(self._links) // 2

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    # ---- the pump thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._pump()
        except BaseException:
            # Without this thread no gRPC call reaches the member: better to stop the process
            # (its WAL makes that safe) so a supervisor restarts it than to serve nothing.
            log.critical("gRPC connection pump died; the member exits", exc_info=True)
            os._exit(1)

    def _pump(self) -> None:
        while not self._stopping:
            for fd, events in self._epoll.poll():
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    self._adopt()
                    continue
                link = self._links.get(fd)
                if link is None:
                    continue
                try:
                    self._on_event(link, fd, events)
                except OSError as error:
                    if error.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN):
                        log.warning("gRPC connection pump failed: %s", error)
                    self._close(link)

    def _adopt(self) -> None:
        while self._incoming:
            link = self._incoming.popleft()
            try:
                for sock in (link.client, link.server):
                    self._links[sock.fileno()] = link
                    self._epoll.register(sock.fileno(), _IN)
            except (OSError, ValueError):  # a client gone before its link was adopted
                self._close(link)

    def _on_event(self, link: _Link, fd: int, events: int) -> None:
        reading, writing = link.flows(fd)
        if events & _WRITABLE and writing.buffered:
            self._drain(link, writing)
        if events & _READABLE and not (link.closed or reading.eof or reading.buffered):
            self._fill(link, reading)
        if link.closed:
            return
        if events & select.EPOLLHUP and (reading.eof or reading.buffered):
            # fd is shut both ways: nothing more can be delivered to it, and what it sent
            # waits for a destination that is full (dropping it beats spinning on HUP).
            self._close(link)
            return
        self._update(link)

    def _fill(self, link: _Link, flow: _Flow) -> None:
        """Move one chunk from src into the pipe, and on into dst."""
        try:
            n = _splice(flow.src.fileno(), flow.pipe_w, CHUNK)
        except BlockingIOError:
            return
        if n == 0:
            flow.eof = True
            self._finish(link, flow)
            return
        flow.buffered = n
        self._drain(link, flow)

    def _drain(self, link: _Link, flow: _Flow) -> None:
        """Move what the pipe holds into dst, as far as dst takes it."""
        while flow.buffered:
            try:
                n = _splice(flow.pipe_r, flow.dst.fileno(), flow.buffered)
            except BlockingIOError:
                return  # dst is full: _update watches it for room
            flow.buffered -= n
            if flow.from_client:
                self.bytes_from_clients += n
            else:
                self.bytes_to_clients += n
        if flow.eof:
            self._finish(link, flow)

    def _finish(self, link: _Link, flow: _Flow) -> None:
        """src ended and the pipe is empty: pass the end on; close when both ways ended."""
        if flow.buffered:
            return
        with contextlib.suppress(OSError):
            flow.dst.shutdown(socket.SHUT_WR)
        flow.shut = True
        if link.upstream.shut and link.downstream.shut:
            self._close(link)

    def _update(self, link: _Link) -> None:
        """Set what epoll watches for both sockets of a link from its flows' state."""
        for fd in (link.client_fd, link.server.fileno()):
            reading, writing = link.flows(fd)
            mask = (0 if reading.eof or reading.buffered else _IN) | (
                _OUT if writing.buffered else 0
            )
            if mask != link.masks[fd]:
                self._epoll.modify(fd, mask)
                link.masks[fd] = mask

    def _close(self, link: _Link) -> None:
        if link.closed:
            return
        link.closed = True
        for sock in (link.client, link.server):
            fd = sock.fileno()
            if self._links.pop(fd, None) is not None:
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
            sock.close()
        link.upstream.close()
        link.downstream.close()
