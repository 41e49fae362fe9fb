"""This process's memory as Linux counts it (/proc/self/status), for the benchmarks that measure
memory in a process of their own (`bench memory`'s CPU rows, `bench scale`'s cells)."""

from __future__ import annotations


def status_kb(field: str) -> int:
    """A /proc/self/status field in kB: VmRSS, VmHWM (its peak), RssAnon (heap and mmapped
    allocations, not the shared libraries' pages; Linux 4.5 or later)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")
