"""report.md and PNG plots from a `p2p bench all` results.json.

`write_report(results, out_dir)` writes out_dir/report.md (one section per suite with a section
in p2p.specs.suites, under its title: the command that reproduces it, a table of its rows in the
suite's columns with the baseline and ratio, the suite's plot) and the plots `<section>.png`:
throughput bars with the baseline in grey (data, lab, step), global img/s against the ideal and
efficiency (ranks), top operators (profile, whose section has its own renderer).
Re-render an existing results file with `p2p bench report DIR/results.json`.
"""

from __future__ import annotations

from pathlib import Path

from p2p.atomic import replace_with, write_text
from p2p.specs import load
from p2p.specs.suites import SUITES


def save_figure(fig, path: Path) -> None:
    """A PNG written atomically (a full disk leaves the previous plot, and no temporary file)."""
    replace_with(path, lambda f: fig.savefig(f, dpi=110, format="png"))


def _cell(value, fmt: str) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if fmt == "x" and isinstance(value, (int, float)):
        return f"{value:.2f}x"
    if fmt == "%" and isinstance(value, (int, float)):
        return f"{100 * value:.1f}%"
    if isinstance(value, float) and fmt != "s":
        return format(value, fmt)
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict], columns) -> str:
    """A markdown table; skipped rows get their reason in a last column."""
    cols = [c for c in columns if any(r.get(c[0]) not in (None, "") for r in rows) or c[0] in ("name", "img_per_s")]
    skipped = any(r.get("skipped") for r in rows)
    head = [c[1] for c in cols] + (["note"] if skipped else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [_cell(r.get(k), f) for k, _, f in cols]
        if skipped:
            cells.append(_cell(f"skipped: {r['skipped']}" if r.get("skipped") else "", "s").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_loglog(plt, fig, ax, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """Finish a growth plot (both axes logarithmic, small title and legend), write it atomically
    and close it: the figures of `bench scale` and of its simulation."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_throughput(rows: list[dict], title: str, path: Path) -> Path | None:
    """Horizontal bars of img/s, the baseline grey, each labelled with its ratio; skipped rows
    are listed with no bar."""
    shown = [r for r in rows if r.get("name")]
    if not any(r.get("img_per_s") for r in shown):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(shown) + 1.4))
    names = [r["name"] for r in shown][::-1]
    values = [r.get("img_per_s") or 0.0 for r in shown][::-1]
    colors = ["#999999" if r["name"] == r.get("baseline") else "#3b75af" for r in shown][::-1]
    bars = ax.barh(names, values, color=colors)
    top = max(values) or 1.0
    for bar, r in zip(bars, shown[::-1]):
        if r.get("img_per_s"):
            label = f" {r['img_per_s']:.3g} img/s"
            if r.get("ratio") is not None:
                label += f" ({r['ratio']:.2f}x)"
        else:
            label = " skipped"
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=8)
    ax.set_xlim(0, top * 1.35)
    ax.set_xlabel("images / s (higher is better; grey = baseline)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_scaling(rows: list[dict], title: str, path: Path) -> Path | None:
    done = [r for r in rows if r.get("img_per_s")]
    if not done:
        return None
    plt = _pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    procs = [r["procs"] for r in done]
    base = done[0]["img_per_s_per_process"] if done[0]["procs"] == 1 else None
    a.plot(procs, [r["img_per_s"] for r in done], "o-", label="measured")
    if base:
        a.plot(procs, [base * p for p in procs], "--", color="#999999", label="ideal (N x 1 process)")
    a.set_ylim(bottom=0)
    a.set_xlabel("processes")
    a.set_ylabel("global images / s")
    a.set_xticks(procs)
    a.legend(fontsize=8)
    b.plot(procs, [100 * (r.get("efficiency") or 0) for r in done], "o-")
    b.axhline(100, ls="--", color="#999999")
    b.set_ylim(0, 115)
    b.set_xticks(procs)
    b.set_xlabel("processes")
    b.set_ylabel("weak-scaling efficiency (%)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_profile(summary: dict, title: str, path: Path) -> Path | None:
    kind = "cuda" if summary.get("top_ops_cuda") else "cpu"
    ops = summary.get(f"top_ops_{kind}") or []
    if not ops:
        return None
    plt = _pyplot()
    ops = ops[:12][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(ops) + 1.4))
    ax.barh([o["name"][:48] for o in ops], [100 * o[f"self_{kind}_share"] for o in ops], color="#3b75af")
    ax.set_xlabel(f"share of self {kind.upper()} time (%)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# the report


def _hardware(env: dict) -> str:
    hw = env.get("gpu") or "no GPU"
    return f"{env.get('cpu')} ({env.get('cpu_cores')} cores), {hw}"


def _versions(env: dict) -> str:
    keys = ("python", "torch", "cuda_build", "torchvision", "dali", "webdataset", "skimage", "PIL", "accelerate")
    return ", ".join(f"{k} {env.get(k) or '-'}" for k in keys)


def write_report(results: dict, out_dir) -> Path:
    """report.md + PNGs into out_dir; returns the report's path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = results.get("environment", {})
    hardware = _hardware(env)
    lines = [
        "# p2p benchmark report",
        "",
        f"- date: {env.get('date')}",
        f"- host: {env.get('host')}; hardware: {hardware}; torch threads: {env.get('torch_threads')}",
        f"- versions: {_versions(env)}",
    ]
    if env.get("load_average") is not None:
        lines.append(f"- load average (1 min) at start: {env['load_average']:.2f} on {env.get('cpu_cores')} cores "
                     "(other work on the machine makes timings noisy)")
    if results.get("command"):
        lines.append(f"- reproduce everything: `{results['command']}`")
    lines += ["", "Every section measures its baseline in the same run; `vs baseline` = img/s / the "
              "baseline's img/s. Medians of the timed rounds.", ""]
    for spec in SUITES:
        sec = results.get(spec.name) if spec.section else None
        if sec is not None:
            lines += _section_lines(spec, sec, out, hardware)
    path = out / "report.md"
    write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def _section_lines(spec, sec: dict, out: Path, hardware: str) -> list[str]:
    """A suite's section of report.md: heading, command, load, then its table and plot."""
    name, title = spec.name, spec.title
    lines = [f"## {title}", ""]
    if sec.get("command"):
        lines += [f"Reproduce: `{sec['command']}`", ""]
    if sec.get("load_average") is not None:
        lines += [f"Load average (1 min) before this section: {sec['load_average']:.2f}; "
                  f"it took {sec.get('seconds', 0):.0f} s.", ""]
    if sec.get("skipped"):
        return lines + [f"Skipped: {sec['skipped']}", ""]
    if sec.get("error"):
        return lines + [f"**Failed:** `{sec['error']}`", ""]
    config = sec.get("config") or {}
    if config:
        shown = ", ".join(f"{k}={v}" for k, v in config.items() if not isinstance(v, (list, dict)) and v is not None)
        lines += [f"Config: {shown}", ""]
    if spec.report:
        return lines + load(spec.report)(sec, out, hardware)
    rows = sec.get("rows") or []
    lines += [markdown_table(rows, spec.columns), ""]
    for note in sec.get("notes") or []:
        lines += [f"Note: {note}", ""]
    png = load(spec.plot)(rows, f"{title}: {hardware}", out / f"{name}.png")
    if png is not None:
        lines += [f"![{name}]({png.name})", ""]
    return lines


def profile_lines(sec: dict, out: Path, hardware: str) -> list[str]:
    """The profile section: its verdict, the top operators and their plot."""
    s = sec.get("summary") or {}
    kind = "cuda" if s.get("top_ops_cuda") else "cpu"
    lines = [f"**{s.get('bottleneck', '')}**", "",
             f"{s.get('img_per_s', 0):.1f} img/s over {s.get('steps')} profiled steps (profiler on); "
             f"waiting for batches {100 * s.get('data_wait_fraction', 0):.0f}% of {s.get('wall_s', 0):.2f} s. "
             f"Chrome trace: `{s.get('trace')}` (chrome://tracing, ui.perfetto.dev or TensorBoard).", ""]
    ops = s.get(f"top_ops_{kind}") or []
    if ops:
        cols = (("name", "operator", "s"), ("calls", "calls", "s"),
                (f"self_{kind}_ms", f"self {kind.upper()} ms", ".1f"), (f"self_{kind}_share", "share", "%"))
        lines += [markdown_table(ops, cols), ""]
    png = plot_profile(s, f"top operators, {hardware}", out / "profile.png")
    if png is not None:
        lines += [f"![profile]({png.name})", ""]
    return lines

