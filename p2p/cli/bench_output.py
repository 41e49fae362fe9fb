"""How `p2p bench` shows a suite: progress lines flushed as they come, rich tables, errors on
stderr (the p2p.bench.suite_io.SuiteOutput every suite's run is given)."""

from __future__ import annotations

import sys


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


class PrintedOutput:
    """A suite's lines and tables on stdout, its errors on stderr."""

    def say(self, text: str) -> None:
        say(text)

    def table(self, title: str, rows: list[dict], columns: tuple[str, ...] = ("name", "img_per_s", "ratio")) -> None:
        print_table(title, rows, columns)

    def error(self, text: str) -> None:
        print(text, end="", file=sys.stderr, flush=True)
