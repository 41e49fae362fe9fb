"""The README a newcomer reads: short enough for ten minutes, the two commands first, a table of
common jobs, every link and anchor resolving (into docs/ and benchmarks/ too), and the test
command that CI runs. Reads files only."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_BYTES = 30 * 1024  # about ten minutes of reading
# Linked files that another open issue adds (issue 25 writes docs/label-maps.md): while absent
# they are not checked; once they exist, their links are.
WRITTEN_ELSEWHERE = {"docs/label-maps.md"}

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """Markdown without its fenced code blocks (links and headings inside code are not real)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def heading_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file: lower case, punctuation dropped
    (inline code marks included), spaces to hyphens, repeats numbered -1, -2, ..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose(text).splitlines():
        m = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(md: Path) -> list[str]:
    bad = []
    for target in LINK.findall(prose(md.read_text())):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not this test's business
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in WRITTEN_ELSEWHERE:
                bad.append(f"{md.name}: {target} (no file {rel})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest.read_text()):
            bad.append(f"{md.name}: {target} (no heading with anchor #{anchor} in {rel})")
    return bad


def section(text: str, title: str) -> str:
    """The text under the level-2 heading `title`, up to the next level-2 heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"README has no section '## {title}'"
    return m.group(1)


def test_readme_reads_in_ten_minutes():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes; move detail to docs/ (at most {MAX_README_BYTES})"


MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md")),
            *(p for d in ("launch", "configs", "tests", ".ci") if (p := ROOT / d / "README.md").exists())]


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_and_anchor_resolves(md):
    assert broken_links(md) == []


def test_anchor_check_catches_a_wrong_anchor(tmp_path):
    md = tmp_path / "x.md"
    md.write_text("# Top\n\n## Resuming after preemption\n\n[ok](#resuming-after-preemption) [bad](#resuming)\n")
    assert heading_anchors(md.read_text()) == {"top", "resuming-after-preemption"}
    assert broken_links(md) == [f"x.md: #resuming (no heading with anchor #resuming in {md})"]


def test_the_two_commands_come_first():
    text = README.read_text()
    assert re.findall(r"^## .*", text, flags=re.M)[:2] == ["## Quickstart (Debian, Python 3.11)", "## Common jobs"]
    first_block = re.search(r"^```bash\n(.*?)^```", text, flags=re.S | re.M).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()]
    assert commands == ["make demo", "make test"]


def test_common_jobs_table_has_a_command_and_a_section_for_each_job():
    text = README.read_text()
    rows = [r for r in section(text, "Common jobs").splitlines() if r.startswith("| ") and "---" not in r][1:]
    jobs = " ".join(r.split("|")[1] for r in rows)
    for job in ("shard COCO", "one GPU", "8 GPUs", "many nodes", "Slurm", "preemption", "evaluate", "export",
                "throughput"):
        assert job in jobs, f"no Common jobs row for {job!r}"
    anchors = heading_anchors(text)
    for row in rows:
        cells = row.split("|")
        assert re.search(r"`(p2p|torchrun|tail) ", cells[2]), f"row without a command: {row}"
        links = LINK.findall(cells[3])
        assert links and all(link.lstrip("#") in anchors for link in links), f"row without a section link: {row}"


def test_resuming_after_preemption_has_its_own_section():
    body = section(README.read_text(), "Resuming after preemption")
    for fact in ("SIGTERM", "SIGUSR2", "requeue", "by hand", "exact", "world size"):
        assert fact.lower() in body.lower(), f"the resume section does not cover {fact!r}"


def test_ci_runs_the_readme_test_command():
    """.ci/run ends with the command README's Tests section gives, so CI runs what users run."""
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith(("#", "export ", "set ", "cd ", "bash "))]
    tests = section(README.read_text(), "Tests")
    command = ci_lines[-1]
    assert shlex.split(command) == ["make", "test"]
    assert f"`{command}`" in tests
