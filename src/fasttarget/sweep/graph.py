"""The dependency graph of a sweep's units: what may start now, what a failure blocks.

Pure bookkeeping over unit keys, no I/O. A unit is ready once every unit it depends on has
finished; a dependency that is not in the graph counts as finished (it was done on disk
before this invocation). There are no phases: a student run starts the moment its teacher
(or its cache) exists, while other ladders still train.

Example:
    >>> g = UnitGraph({"ladder:a": (), "ladder:b": (), "run:x": ("ladder:a",), "run:y": ("ladder:b",)})
    >>> g.ready()
    ['ladder:a', 'ladder:b']
    >>> g.start("ladder:a"); g.start("ladder:b"); g.finish("ladder:a"); g.ready()
    ['run:x']
    >>> g.fail("ladder:b")
    ['run:y']

A *partial* unit (a fleet, whose members need different teachers) does not fail with a
dependency: it is ready once every dependency has settled, and trains what it still can.

    >>> g = UnitGraph({"cache:a": (), "cache:b": (), "fleet:ab": ("cache:a", "cache:b")}, partial={"fleet:ab"})
    >>> g.start("cache:a"); g.finish("cache:a"); g.start("cache:b")
    >>> g.fail("cache:b"), g.ready()
    ([], ['fleet:ab'])
"""

from __future__ import annotations

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


class UnitGraph:
    """Unit keys with their dependencies, in priority order (the order of ``deps``).

    Args:
        deps: each unit's key mapped to the keys it needs; iteration order is the order in
            which :meth:`ready` hands out units that are ready together.
        partial: units that run with whatever dependencies finished (not failed by one).
    """

    def __init__(self, deps: dict[str, tuple[str, ...]], partial: set[str] | frozenset[str] = frozenset()) -> None:
        self._partial = frozenset(partial)
        self._deps = {k: tuple(d for d in v if d in deps) for k, v in deps.items()}
        self._state = dict.fromkeys(deps, PENDING)
        self._dependents: dict[str, list[str]] = {k: [] for k in deps}
        for key, needs in self._deps.items():
            for d in needs:
                self._dependents[d].append(key)

    def __len__(self) -> int:
        return len(self._state)

    def state(self, key: str) -> str:
        return self._state[key]

    def ready(self) -> list[str]:
        """Pending units whose dependencies have all finished, in priority order."""
        return [k for k, s in self._state.items()
                if s == PENDING and all(self._state[d] in ((DONE, FAILED) if k in self._partial else (DONE,))
                                        for d in self._deps[k])]

    def start(self, key: str) -> None:
        self._state[key] = RUNNING

    def finish(self, key: str) -> None:
        self._state[key] = DONE

    def retry(self, key: str) -> None:
        """Put a failed attempt back in line."""
        self._state[key] = PENDING

    def fail(self, key: str) -> list[str]:
        """Mark ``key`` failed; return the units it blocks (all its pending dependents, transitively),
        which are marked failed too."""
        self._state[key] = FAILED
        blocked, stack = [], list(self._dependents[key])
        while stack:
            k = stack.pop(0)
            if self._state[k] == PENDING and k not in self._partial:
                self._state[k] = FAILED
                blocked.append(k)
                stack.extend(self._dependents[k])
        return blocked

    @property
    def settled(self) -> bool:
        """Every unit finished or failed."""
        return all(s in (DONE, FAILED) for s in self._state.values())
