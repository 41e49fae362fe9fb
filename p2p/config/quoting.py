"""Values quoted in error messages. Config values come from files, command lines and
checkpoints, so a message may not call `repr` on them blindly: a value can be nested too deeply
for it (RecursionError), an int too long for `str` (ValueError past 4300 digits), huge, or an
object whose repr spans lines (a tensor). `shown` quotes the start of any of them, on one line."""

from __future__ import annotations

from typing import Any


def _pieces(value: Any, depth: int):
    if depth > 8:
        yield "..."
    elif isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield from ((", ",) if i else ())
            yield from _pieces(k, depth + 1)
            yield ": "
            yield from _pieces(v, depth + 1)
        yield "}"
    elif isinstance(value, (list, tuple)):
        yield "[" if isinstance(value, list) else "("
        for i, v in enumerate(value):
            yield from ((", ",) if i else ())
            yield from _pieces(v, depth + 1)
        yield "]" if isinstance(value, list) else ")"
    elif isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        yield f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    elif isinstance(value, str) and len(value) > 200:
        yield repr(value[:200])
    elif value is None or isinstance(value, (str, int, float, bytes)):
        yield repr(value)
    else:  # e.g. a tensor from a checkpoint's config: its repr spans lines
        yield f"<a {type(value).__name__}>"


def shown(value: Any, limit: int = 80) -> str:
    """repr for a message, cut at `limit` characters: values come from files and command lines,
    so a repr may be nested too deeply for `repr` (RecursionError), hold an int too long for
    `str` (ValueError past 4300 digits) or be huge; its start is enough to recognise it."""
    out, n = [], 0
    for piece in _pieces(value, 0):
        out.append(piece)
        n += len(piece)
        if n > limit:
            return "".join(out)[: limit - 3] + "..."
    return "".join(out)
