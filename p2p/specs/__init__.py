"""One table per kind of plug-in: data backends, tasks, generators, loss terms, bench suites.

Each kind has a module here holding its spec (a small frozen dataclass) and its table, where
every plug-in of that kind is registered once, by one line. Everything that offers a choice
(the config schema, `p2p config --keys`, the commands), checks one (the trainer, the loaders,
Slurm submission) or reports one (benchmarks, the GPU check) reads the table: adding a plug-in
is one new module and one registration line.

These modules import nothing heavy (no torch, no p2p subpackage): the config schema reads the
names from them, and a spec names its implementation as "module:attribute", imported only when
it is used (`Table.load`). So the tables sit below everything that reads them.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Generic, Iterator, TypeVar

from p2p.errors import UsageError

S = TypeVar("S")


def load(ref: str) -> Any:
    """The object a "package.module:attribute" reference names, imported now."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise ValueError(f"a plug-in reference is 'module:attribute', not {ref!r}")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Table(Generic[S]):
    """The registered specs of one kind, by name, in registration order."""

    def __init__(self, kind: str):
        self.kind = kind  # what a user calls it, for errors: "data.backend", "task.name", ...
        self._specs: dict[str, S] = {}

    def register(self, spec: S) -> S:
        name = spec.name  # type: ignore[attr-defined]
        if name in self._specs:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._specs[name] = spec
        return spec

    def names(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def __getitem__(self, name: str) -> S:
        try:
            return self._specs[name]
        except KeyError:
            near = difflib.get_close_matches(str(name), self._specs, n=1, cutoff=0.5)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UsageError(f"{self.kind}={name!r} is not one of {', '.join(self._specs)}{hint}") from None

    def get(self, name: str, default: S | None = None) -> S | None:
        return self._specs.get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[S]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)
