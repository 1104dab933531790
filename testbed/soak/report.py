"""The soak run's report: a text summary, report.json, and a plot of rate, latency, memory and the faults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from testbed.soak.harness import SoakResult

FAULT_COLOURS = {"kill": "tab:red", "sink": "tab:orange", "n3": "tab:purple", "disk": "tab:brown"}


def summary_lines(r: SoakResult) -> list[str]:
    c = r.config
    lost = f"{len(r.lost)}" + (f" (actions {', '.join(map(str, r.lost[:20]))}{' …' if len(r.lost) > 20 else ''})"
                               if r.lost else "")
    lines = [
        f"soak: {r.actions} UE actions from {c['ues']} UEs at {c['rate']:g}/s for {c['seconds']:g} s "
        f"(load took {r.load_seconds:.0f} s; {c['cores']} cores), {len(r.faults)} faults",
        f"  UE side: {r.ue_ok} answered, {r.ue_failed} failed (N3 loss, a TCP timeout)",
        f"  served by the main application: {r.expected}; reached the function: {r.delivered}; "
        f"duplicates: {r.duplicates}; LOST: {lost}",
        f"  latency UE send -> function: p50 {r.latency_ms['p50']:.1f} ms, p95 {r.latency_ms['p95']:.1f}, "
        f"p99 {r.latency_ms['p99']:.1f}, max {r.latency_ms['max']:.0f}",
        "  faults:",
    ]
    for f in r.faults:
        took = (f["ended"] - f["started"]) if f.get("ended") and f.get("started") else 0.0
        at = (f["started"] - r.started) if f.get("started") else f["at"]
        detail = {k: v for k, v in f.get("detail", {}).items() if k in ("pid", "new_pid", "pids", "ballast_bytes",
                                                                         "dropped", "delayed", "reordered",
                                                                         "ingest_refused")}
        lines.append(f"    t={at:6.1f} s  {f['kind']:<14} {took:5.1f} s  {detail if detail else ''}")
    lines.append("  memory (RSS, MiB) and open fds, early -> late in the load:")
    for role, g in sorted(r.resource_growth.items()):
        lines.append(f"    {role:<10} {g['rss_kb_early'] / 1024:7.1f} -> {g['rss_kb_late'] / 1024:7.1f} "
                     f"({g['rss_growth_pct']:+.1f} %)   fds {g['fds_early']:.0f} -> {g['fds_late']:.0f} "
                     f"(max {g['fds_max']:.0f})")
    return lines


def print_summary(r: SoakResult, out: IO[str]) -> None:
    for line in summary_lines(r):
        print(line, file=out)


def write_json(r: SoakResult, path: Path) -> None:
    path.write_text(json.dumps(r.to_json(), indent=1) + "\n")


def write_plot(r: SoakResult, path: Path) -> bool:
    """rate, latency and memory over time with every fault's span shaded; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [p["t"] for p in r.timeline]
    fig, (ax_rate, ax_lat, ax_mem) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    ax_rate.plot(t, [p["sent"] for p in r.timeline], label="UE actions sent /s", lw=1)
    ax_rate.plot(t, [p["delivered"] for p in r.timeline], label="reached the function /s", lw=1)
    ax_rate.set_ylabel("per second")
    ax_rate.legend(loc="upper right", fontsize=8)
    ax_lat.plot(t, [p["p50_ms"] for p in r.timeline], label="p50", lw=1)
    ax_lat.plot(t, [p["p99_ms"] for p in r.timeline], label="p99", lw=1)
    ax_lat.set_yscale("symlog", linthresh=10)
    ax_lat.set_ylabel("UE send → function (ms)\nby second sent")
    ax_lat.legend(loc="upper right", fontsize=8)
    by_role: dict[str, list[tuple[float, float]]] = {}
    for s in r.samples:
        by_role.setdefault(s["role"], []).append((s["t"] - r.started, s["rss_kb"] / 1024))
    for role, pts in sorted(by_role.items()):
        pts.sort()
        ax_mem.plot([p[0] for p in pts], [p[1] for p in pts], label=role, lw=1)
    ax_mem.set_ylabel("RSS (MiB)")
    ax_mem.set_xlabel("seconds since the load started")
    ax_mem.legend(loc="upper left", fontsize=7, ncol=4)
    for f in r.faults:
        if not f.get("started"):
            continue
        a, b = f["started"] - r.started, (f.get("ended") or f["started"]) - r.started
        colour = FAULT_COLOURS.get(f["kind"].split("_")[0], "grey")
        for ax in (ax_rate, ax_lat, ax_mem):
            ax.axvspan(a, max(b, a + 0.3), color=colour, alpha=0.15)
        ax_rate.annotate(f["kind"], (a, 1.0), xycoords=("data", "axes fraction"), rotation=90, fontsize=7,
                         va="top", ha="right")
    lost = len(r.lost)
    fig.suptitle(f"soak: {r.actions} actions at {r.config['rate']:g}/s, {len(r.faults)} faults: "
                 f"{r.delivered}/{r.expected} delivered, {lost} lost, {r.duplicates} duplicates", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_all(r: SoakResult, out_dir: Path, stream: IO[str]) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(r, out_dir / "soak.json")
    (out_dir / "soak.txt").write_text("\n".join(summary_lines(r)) + "\n")
    plotted = write_plot(r, out_dir / "soak.png")
    print_summary(r, stream)
    print(f"report: {out_dir / 'soak.json'}, {out_dir / 'soak.txt'}"
          + (f", {out_dir / 'soak.png'}" if plotted else " (no plot: matplotlib missing)"), file=stream)
    return {"json": str(out_dir / "soak.json"), "plot": str(out_dir / "soak.png") if plotted else None}
