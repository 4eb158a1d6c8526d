"""A peer that stops answering without closing its connection is noticed within seconds.

The peer runs in a child process that is frozen with SIGSTOP: its kernel keeps the TCP connection
open and acknowledges segments, so only HTTP/2 keepalive pings can tell that nobody is there.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import Member, app, run, wait_until

pytestmark = pytest.mark.integration

_PEER = """
import asyncio, sys
from pathlib import Path
from raftkv.transport import PeerTransport

async def main() -> None:
    async def ignore(message, path) -> None:
        pass

    transport = PeerTransport(
        member_id=2, cluster_id=0xC1, on_messages=lambda messages: None,
        on_snapshot=ignore, snapshot_dir=Path(sys.argv[1]),
    )
    await transport.start(["http://127.0.0.1:0"])
    print(transport.listen_urls[0], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_frozen_peer_is_reported_unreachable_by_keepalive(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _PEER, str(tmp_path / "peer")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        url = child.stdout.readline().strip()

        async def scenario() -> None:
            a = await Member(1, tmp_path).start()
            a.transport.add_peer(2, [url])
            try:
                a.transport.send([app(1, 2, 1)])
                await wait_until(lambda: a.transport.peer_stats(2).connected)
                os.kill(child.pid, signal.SIGSTOP)
                frozen_at = time.monotonic()
                seq = 1
                # Heartbeats keep flowing into the socket buffers; nothing errors but keepalive.
                while 2 not in a.unreachable:
                    seq += 1
                    a.transport.send([app(1, 2, seq)])
                    await asyncio.sleep(0.1)
                    assert time.monotonic() - frozen_at < 10, "dead peer not noticed"
                assert not a.transport.peer_stats(2).connected
            finally:
                await a.transport.stop()

        run(scenario())
    finally:
        child.kill()
        child.wait()
