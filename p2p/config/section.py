"""What every config section shares (`Section`: the choice check of its fields, the bounds
`p2p config --keys` shows), the field helper `_f`, and the limits the sections' checks use."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any, ClassVar

from p2p.config.quoting import shown
from p2p.errors import UsageError

def _f(default: Any, help: str, choices: tuple | None = None, **kw):
    """A dataclass field with a help line (and optional allowed choices)."""
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise UsageError(f"{key}={shown(value)}: {why}")


# "section.key" -> (lowest, highest), recorded by `Section.within` for `p2p config --keys`
BOUNDS: dict[str, tuple[float, float]] = {}
MAX_COUNT = 2**40  # steps, epochs, images: about 1.1e12, beyond any run and far from int64's end
MAX_SIDE = 16384  # pixels: image sides, load sizes
MAX_WEIGHT = 1e6  # loss weights


class Section:
    """What every section shares: the choice check of its fields, then its own `check()`.
    `SECTION` is its name in the config tree (for messages)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise UsageError(f"{self.SECTION}.{f.name}={shown(value)} is not allowed; choose one of "
                                 f"{', '.join(map(str, choices))}")
            # nan passes every comparison a check() makes (nan < 0 is False), inf most of them
            if isinstance(value, float) and not math.isfinite(value):
                raise UsageError(f"{self.SECTION}.{f.name}={value}: must be a finite number")
        self.check()

    def check(self) -> None:
        """What a single field's type and choices cannot express."""

    def need(self, ok: bool, key: str, why: str) -> None:
        _require(ok, f"{self.SECTION}.{key}", getattr(self, key), why)

    def at_least(self, minimum: float, *keys: str) -> None:
        for key in keys:
            self.need(getattr(self, key) >= minimum, key, f"must be >= {minimum}")

    def within(self, lowest: float, highest: float, *keys: str) -> None:
        """Each key in [lowest, highest]: generous for real use, small enough that nothing derived
        from it overflows or asks for an absurd allocation (checked before anything starts)."""
        for key in keys:
            BOUNDS[f"{self.SECTION}.{key}"] = (lowest, highest)
            self.need(lowest <= getattr(self, key) <= highest, key, f"must be between {lowest} and {highest}")
