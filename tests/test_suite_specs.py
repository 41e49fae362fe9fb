"""Every registered `p2p bench` suite (p2p.specs.suites) through its contract, at the smallest
size its spec declares: it parses its flags, runs, exits 0 and writes well-formed JSON; a suite
with a `bench all` section gives the rows its report table reads (and report.md renders them
under its title); a suite with a GPU-check part gives the rows the check's summary keeps. A new
suite is tested here by being registered. No timing assertions."""

from __future__ import annotations

import argparse
import json
import shlex

import pytest

from p2p.specs import load
from p2p.specs.suites import SUITES, SuiteSpec


class RecordedOutput:
    """What a suite shows, kept for the assertions (the command prints the same calls)."""

    def __init__(self):
        self.lines, self.tables, self.errors = [], [], []

    def say(self, text: str) -> None:
        self.lines.append(text)

    def table(self, title: str, rows: list[dict], columns=("name", "img_per_s", "ratio")) -> None:
        assert all(isinstance(r, dict) for r in rows)
        self.tables.append((title, rows, tuple(columns)))

    def error(self, text: str) -> None:
        self.errors.append(text)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A small shard folder of COCO-like JPEGs, as `p2p bench all` makes for itself."""
    from p2p.bench.photos import build_shards

    return build_shards(tmp_path_factory.mktemp("suite_shards"), 8, 0.25, 40)


def smoke_args(spec: SuiteSpec, tmp, shards_folder) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"p2p bench {spec.name}")
    load(spec.arguments)(parser)
    words = [w.format(tmp=tmp, shards=shards_folder) for w in shlex.split(spec.smoke)]
    return parser.parse_args(words)


# the suites whose smallest run still starts processes (torchrun ranks, a process per row)
STARTS_PROCESSES = {"ranks", "memory"}


@pytest.mark.parametrize("spec", [pytest.param(s, marks=[pytest.mark.slow] if s.name in STARTS_PROCESSES else [])
                                  for s in SUITES], ids=SUITES.names())
def test_every_suite_runs_at_its_smallest_size_and_gives_its_declared_rows(spec, tmp_path, request):
    if not spec.smoke:
        pytest.skip(f"{spec.name} declares no CPU-sized run (it needs a GPU)")
    if spec.name == "report":  # re-renders a results.json: the smallest one `bench all` writes
        (tmp_path / "results.json").write_text(json.dumps({"environment": {"cpu_cores": 2}}))
    folder = request.getfixturevalue("shards") if "{shards}" in spec.smoke else None
    out = RecordedOutput()
    code = load(spec.run)(smoke_args(spec, tmp_path, folder), out)
    assert not out.errors, out.errors
    if not spec.smoke_json:
        assert code == 0 and out.lines
        return
    payload = json.loads(open(spec.smoke_json.format(tmp=tmp_path)).read())
    assert isinstance(payload, dict)
    if spec.name == "gpu-report":  # nothing ran: no verdict invented, exit 1
        assert code == 1 and payload["passed"] is False and payload["unfinished"] == []
        return
    assert code == 0
    if spec.name == "all":
        for name in spec_sections(payload):
            assert "error" not in payload[name], payload[name].get("error")
        return
    if spec.report:  # a section of its own shape (profile: a summary, not rows)
        check_report_section(spec, {"config": payload.get("config"), "summary": payload.get("summary")}, tmp_path)
        return
    rows = payload.get("results") or []
    if spec.section or (spec.gpu_check and not spec.gpu_check.rows):  # rows of its own shape: no name
        assert rows and all(isinstance(r.get("name"), str) for r in rows)
    if spec.section and spec.columns:
        keys = {k for k, _, _ in spec.columns}
        assert {"name", "img_per_s", "ratio"} <= keys
        assert all(k in r for r in rows for k in ("name", "img_per_s", "ratio"))
        assert all(r["img_per_s"] > 0 for r in rows if not r.get("skipped"))
        check_report_section(spec, {"rows": rows}, tmp_path)
    if spec.gpu_check:
        check_gpu_part(spec, payload, tmp_path)


def spec_sections(results: dict) -> list[str]:
    return [s.name for s in SUITES if s.section and s.name in results]


def check_report_section(spec: SuiteSpec, section: dict, tmp_path) -> None:
    """report.md renders the section under the suite's title, as a table."""
    from p2p.bench.report import write_report

    report = write_report({"environment": {}, spec.name: {"command": f"p2p bench {spec.name}", **section}},
                          tmp_path / "report").read_text()
    assert f"## {spec.title}" in report and f"p2p bench {spec.name}" in report and "|---|" in report
    assert "Failed" not in report


def check_gpu_part(spec: SuiteSpec, payload: dict, tmp_path) -> None:
    from p2p.bench.gpu_check import summarize

    work = tmp_path / "gpu-check"
    work.mkdir()
    (work / f"{spec.name}.json").write_text(json.dumps(payload))
    result = summarize(work)
    kept = result[spec.name]
    assert len(kept) == len(payload["results"])
    if spec.gpu_check.rows:  # its own rows and lines: each row is a line of summary.md
        from p2p.bench.gpu_check import summary_markdown

        text = summary_markdown(result)
        assert all(load(spec.gpu_check.line)(r) in text for r in kept)
        return
    assert all(set(r) <= set(spec.gpu_check.keys) and r["name"] for r in kept)


def test_the_table_is_what_bench_all_the_report_and_the_gpu_check_read():
    from p2p.bench.all_bench import SECTIONS
    from p2p.bench.gpu_check_files import suite_parts

    assert SECTIONS == tuple(s.name for s in SUITES if s.section)
    assert [line.split("\t")[0] for line in suite_parts(False) + suite_parts(False, last=True)] == \
        [s.name for s in SUITES if s.gpu_check]
    for spec in SUITES:
        gpu = (spec.gpu_check.rows, spec.gpu_check.line) if spec.gpu_check else ()
        for ref in (spec.arguments, spec.run, spec.section, spec.plot, spec.report, *gpu):
            if ref:
                assert callable(load(ref)) and not ref.startswith("p2p.cli"), ref  # the library never names the command
