"""Config.validate: bad settings are refused with a message naming the setting."""

from __future__ import annotations

import random

import pytest
from raftkv.raft import Config, MemoryStorage, RawNode


def cfg(**kw: object) -> Config:
    base: dict[str, object] = dict(id=1, storage=MemoryStorage(), rng=random.Random(1))
    base.update(kw)
    return Config(**base)  # type: ignore[arg-type]


def test_defaults_are_valid() -> None:
    c = cfg()
    c.validate()
    assert (c.election_tick, c.heartbeat_tick, c.max_inflight_msgs) == (10, 1, 256)
    assert c.check_quorum and c.pre_vote and not c.disable_proposal_forwarding


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"id": 0}, "id"),
        ({"election_tick": 1, "heartbeat_tick": 1}, "election_tick"),
        ({"election_tick": 3, "heartbeat_tick": 5}, "election_tick"),
        ({"heartbeat_tick": 0}, "heartbeat_tick"),
        ({"max_inflight_msgs": 0}, "max_inflight_msgs"),
        ({"max_size_per_msg": -1}, "max_size_per_msg"),
        ({"max_uncommitted_entries_size": -5}, "max_uncommitted_entries_size"),
        ({"applied": -1}, "applied"),
    ],
)
def test_invalid_settings_are_refused(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        cfg(**kw).validate()
    with pytest.raises(ValueError, match=needle):
        RawNode(cfg(**kw))
