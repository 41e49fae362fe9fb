"""What every `p2p bench` suite's command prints and writes: progress lines, rich tables, the
comma-separated flag values and the --json file (shared by p2p.cli.bench and its suites' modules)."""

from __future__ import annotations

from p2p.errors import UsageError


def say(text: str) -> None:
    print(text, flush=True)


def print_table(title: str, rows: list[dict], columns: tuple[str, ...] = ("name", "img_per_s", "ratio")) -> None:
    """Rich table of rows; numbers get 4 significant digits, ratios an x."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c == "name" else "right")
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if isinstance(v, float):
                cells.append(f"{v:.2f}x" if c == "ratio" else f"{v:.4g}")
            else:
                cells.append("" if v is None else str(v))
        table.add_row(*cells)
    Console().print(table)


def names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def counts(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(n) for n in names(text))
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give whole numbers, comma-separated, such as 1,2 or 1,2,4") from None


def write_json_to(path, payload: dict) -> None:
    if path:
        from p2p.bench.common import write_json

        write_json(path, payload)
