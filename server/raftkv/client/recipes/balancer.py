"""Client-side load balancing over the live instances of a service.

A balancer picks from a `ServiceView`, so it only ever hands out instances that are registered
right now: a new instance is in the rotation as soon as its registration is seen, a dead one
leaves it when its lease expires. Both balancers are deterministic given the instance set
(instances are considered in name order), which keeps them easy to reason about and to test.

- `RoundRobin` cycles through the instances; when the set changes it continues after the
  instance it picked last, so nobody is skipped or picked twice in a row because of the change.
- `LeastRecentlyUsed` picks the instance whose last use is oldest (never-used ones first), which
  evens out load when callers hold instances for different lengths of time; `release(name)`
  counts the end of a use as its time.
"""

from __future__ import annotations

import abc
import itertools
from dataclasses import dataclass

from raftkv.client.recipes.discovery import ServiceView

__all__ = ["Balancer", "Instance", "LeastRecentlyUsed", "NoInstanceError", "RoundRobin"]


class NoInstanceError(LookupError):
    """The service has no live instance."""


@dataclass(frozen=True, slots=True)
class Instance:
    name: str
    address: str


class Balancer(abc.ABC):
    """Base class: `pick()` one live instance, or `await wait_pick()` for one to appear."""

    def __init__(self, view: ServiceView) -> None:
        self.view = view

    def pick(self) -> Instance:
        instances = self.view.instances
        if not instances:
            raise NoInstanceError(f"no live instance of {self.view.service}")
        name = self._choose(sorted(instances))
        return Instance(name, instances[name])

    async def wait_pick(self, *, timeout: float | None = None) -> Instance:
        await self.view.wait_for(bool, timeout=timeout)
        return self.pick()

    @abc.abstractmethod
    def _choose(self, names: list[str]) -> str:
        """The name to hand out among `names` (sorted, never empty)."""


class RoundRobin(Balancer):
    def __init__(self, view: ServiceView) -> None:
        super().__init__(view)
        self._last: str | None = None

    def _choose(self, names: list[str]) -> str:
        after = [n for n in names if self._last is not None and n > self._last]
        self._last = (after or names)[0]
        return self._last


class LeastRecentlyUsed(Balancer):
    def __init__(self, view: ServiceView) -> None:
        super().__init__(view)
        self._clock = itertools.count(1)
        self._used: dict[str, int] = {}

    def _choose(self, names: list[str]) -> str:
        name = min(names, key=lambda n: (self._used.get(n, 0), n))
        self._used[name] = next(self._clock)
        return name

    def release(self, name: str) -> None:
        """The use of `name` ended now (it becomes the most recently used)."""
        self._used[name] = next(self._clock)
