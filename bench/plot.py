"""Draw docs/img/dissemination.png from bench/results/dissemination.json.

    .venv/bin/python -m bench.plot [--results FILE] [--out FILE]

Three panels against room size, for both designs (and each process count, trust on and off):
latency from send to shown (p50 and p99), frames sent per delivered message, and the sender's
fan-out (frames the origin itself writes per message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bench.common import BENCH_DIR, RESULTS_DIR

DEFAULT_OUT = BENCH_DIR.parent / "docs" / "img" / "dissemination.png"


def plot(results: Path, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(results.read_text())
    rows: list[dict[str, Any]] = doc["rows"]
    series: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in rows:  # results from before the trust switch have no "trust": they ran with none
        series.setdefault((r["design"], r.get("trust", "off"), r["procs"]), []).append(r)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colours = {("flood", "on"): "tab:blue", ("flood", "off"): "tab:green"}
    for (design, trust, procs), rs in sorted(series.items()):
        rs.sort(key=lambda r: r["n"])
        ns = [r["n"] for r in rs]
        style = "-" if procs == 1 else "--"
        label = f"{design}, trust {trust}, {procs} process{'es' if procs > 1 else ''}"
        c = colours.get((design, trust), "tab:red")
        axes[0].plot(ns, [r["p99_ms"] for r in rs], style, color=c, marker="o", label=label)
        axes[0].plot(ns, [r["p50_ms"] for r in rs], style, color=c, marker=".", alpha=0.4)
        axes[1].plot(
            ns, [r["frames_per_delivery"] for r in rs], style, color=c, marker="o", label=label
        )
        axes[2].plot(ns, [r["fanout"] for r in rs], style, color=c, marker="o", label=label)
    axes[0].set_title("latency send to shown: p99 (big dots), p50 (faint)")
    axes[0].set_ylabel("ms")
    axes[0].set_yscale("log")
    axes[1].set_title("frames sent per delivered message")
    axes[1].set_ylim(bottom=0)
    axes[2].set_title("frames the sender itself writes per message")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("room size N (peers online)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    m = doc.get("machine", {})
    s = doc.get("settings", {})
    fig.suptitle(
        f"room dissemination, {s.get('messages', '?')} messages at {s.get('rate', '?')}/s, "
        f"median of {s.get('repeat', '?')} runs - {m.get('cores', '?')} cores, "
        f"{m.get('cpu', '?')}, Python {m.get('python', '?')}",
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--results", type=Path, default=RESULTS_DIR / "dissemination.json")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    print(f"wrote {plot(args.results, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
