"""What a `p2p bench` suite's run function is given and uses besides its options: the output it
shows progress lines and tables through (the command's prints them, a test's records them), and
the parsing of comma-separated flag values and the optional --json file they share."""

from __future__ import annotations

from typing import Protocol

from p2p.errors import UsageError


class SuiteOutput(Protocol):
    def say(self, text: str) -> None:
        """A progress or result line."""

    def table(self, title: str, rows: list[dict], columns: tuple[str, ...] = ("name", "img_per_s", "ratio")) -> None:
        """Rows as a table of the given columns."""

    def error(self, text: str) -> None:
        """Text for stderr (a failed section's traceback)."""


def names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def counts(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in names(text))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give whole numbers, comma-separated, such as 1,2 or 1,2,4") from None


def write_json_to(path, payload: dict) -> None:
    """payload into path (atomically), when a path was given."""
    if path:
        from p2p.bench.common import write_json

        write_json(path, payload)


def skipped_lines(out: SuiteOutput, rows: list[dict]) -> None:
    for r in rows:
        if r.get("skipped"):
            out.say(f"  skipped {r['name']}: {r['skipped']}")
