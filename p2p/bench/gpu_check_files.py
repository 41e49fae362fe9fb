"""The files of a `benchmarks/gpu-check.sh` call: what the parts left in the work folder, and
the few small files that come back from the node (the output folder).

The node's runner returns at most 8 files of at most 16 MiB from one folder, and nothing that
is not in it when the call ends. So the script works in a scratch folder (WORK: photos, shards,
runs, checkpoints, logs, the parts' JSON) and the output folder (OUT) holds only

- `parts.tsv`: a line per part as it ends (name, exit code, seconds, limit), written by the script;
- `gpu-check.json` and `summary.md`: the verdict so far, rewritten after every part;
- `results.tar.gz`: the logs, the trainings' `metrics.jsonl` and the parts' JSON and JUnit
  files, each cut to its last MAX_MEMBER bytes, at most MAX_ARCHIVE in all. Unpacked next to
  `parts.tsv` it is a folder `p2p bench gpu-report` reads again.

Nothing here imports torch: the report runs after every part, in seconds.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from pathlib import Path
from xml.etree import ElementTree

ARCHIVE = "results.tar.gz"
MAX_ARCHIVE = 16 * 2**20  # the runner's limit per returned file
MAX_MEMBER = 2 * 2**20  # the tail of a long log is what says how it ended
MAX_OUT_FILES = 8
# what goes into the archive, relative to WORK (no photos, shards, checkpoints or events)
ARCHIVED = ("check.json", "environment.json", "backends.txt", "*.json", "*.xml",
            "logs/*.log", "runs/*/metrics.jsonl", "runs/*/config.yaml")


def suite_parts(stub: bool, last: bool = False) -> list[str]:
    """The bench suites the check runs (p2p.specs.suites, the specs with a GPU-check part) before
    the GPU trainings' pytest (`last`: after it), a line each as benchmarks/gpu-check.sh reads
    them: name, planned seconds, flags (tab-separated)."""
    from p2p.specs.suites import gpu_check_parts

    return ["\t".join((s.name, str(s.gpu_check.stub_seconds if stub else s.gpu_check.seconds),
                       s.gpu_check.stub_args if stub else s.gpu_check.args))
            for s in gpu_check_parts() if s.gpu_check.last == last]


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_rows(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a last line cut mid-write (a killed run) is left out."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def part_status(rc: str) -> str:
    if rc == "skipped":
        return "skipped (no time left)"
    if rc == "unselected":
        return "not run (not in P2P_GPU_CHECK_ONLY)"
    if rc == "0":
        return "ok"
    if rc == "124":
        return "cut at its limit"
    if rc == "137":
        return "killed (SIGKILL: at its limit after the grace, or from outside)"
    return f"failed (exit {rc})"


def read_parts(path: Path, plan: list | None = None) -> list[dict]:
    """parts.tsv as dicts; with the check's `plan` ([name, seconds] in order), the parts with no
    line yet follow as 'did not finish'."""
    parts = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            name, rc, seconds, limit = (line.split("\t") + ["", "", "", ""])[:4]
            if not name:
                continue
            parts.append({"name": name, "status": part_status(rc), "rc": int(rc) if rc.lstrip("-").isdigit() else None,
                          "seconds": float(seconds or 0), "limit_s": int(float(limit or 0))})
    done = {p["name"] for p in parts}
    for name, planned in plan or []:
        if name not in done:
            parts.append({"name": name, "status": "did not finish (not started, or running when the check ended)",
                          "rc": None, "seconds": 0.0, "limit_s": int(planned)})
    return parts


_VERBOSE = re.compile(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b(.*)$")


def pytest_summary(xml: Path, log: Path | None = None) -> dict | None:
    """Counts and failing tests of a JUnit XML report (pytest --junitxml); without one (pytest
    was killed before writing it), the per-test lines of its `-v` log."""
    if Path(xml).is_file():
        try:
            return _junit(xml)
        except ElementTree.ParseError:
            pass
    if log is None or not Path(log).is_file():
        return None
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], []
    for line in Path(log).read_text(errors="replace").splitlines():
        m = _VERBOSE.match(line.strip())
        if not m:
            continue
        test, outcome, rest = m.groups()
        counts["tests"] += 1
        if outcome in ("FAILED", "ERROR"):
            counts["failures" if outcome == "FAILED" else "errors"] += 1
            failed.append(test)
        elif outcome == "SKIPPED":
            counts["skipped"] += 1
            skipped.append(f"{test}: {rest.strip()}")
    if not counts["tests"]:
        return None
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed_tests": failed, "skipped_tests": skipped, "from": "log (no JUnit file: pytest did not finish)"}


def _junit(path: Path) -> dict:
    root = ElementTree.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    failed = [f"{case.get('classname')}::{case.get('name')}" for s in suites for case in s.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    skipped = [f"{case.get('name')}: {case.find('skipped').get('message', '')}" for s in suites
               for case in s.iter("testcase") if case.find("skipped") is not None]
    return {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed_tests": failed, "skipped_tests": skipped, "from": "junit"}


def merged_pytest(summaries: list[dict | None]) -> dict | None:
    got = [s for s in summaries if s]
    if not got:
        return None
    out = {k: sum(s[k] for s in got) for k in ("tests", "failures", "errors", "skipped", "passed")}
    out["failed_tests"] = [t for s in got for t in s["failed_tests"]]
    out["skipped_tests"] = [t for s in got for t in s["skipped_tests"]]
    out["from"] = ", ".join(s["from"] for s in got)
    return out


def write_archive(work: Path, out: Path) -> dict:
    """OUT/results.tar.gz of what ARCHIVED names in WORK, each file's last MAX_MEMBER bytes,
    members left out once the archive would pass MAX_ARCHIVE. Returns what went in and what not."""
    from p2p.atomic import write_bytes

    buf, kept, left = io.BytesIO(), [], []
    seen: set[Path] = set()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for pattern in ARCHIVED:
            for path in sorted(Path(work).glob(pattern)):
                if path in seen or not path.is_file():
                    continue
                seen.add(path)
                data = path.read_bytes()
                if len(data) > MAX_MEMBER:
                    data = b"[... cut: the last %d of %d bytes follow]\n" % (MAX_MEMBER, len(data)) + data[-MAX_MEMBER:]
                if buf.tell() + len(data) > MAX_ARCHIVE - 2**20:  # compressed size only ever shrinks it
                    left.append(str(path.relative_to(work)))
                    continue
                info = tarfile.TarInfo(str(path.relative_to(work)))
                info.size, info.mtime = len(data), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(data))
                kept.append(info.name)
    write_bytes(Path(out) / ARCHIVE, buf.getvalue())
    return {"file": ARCHIVE, "bytes": len(buf.getvalue()), "members": kept, "left_out": left}
