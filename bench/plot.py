"""Draw docs/img/dissemination.png from bench/results/dissemination.json.

    .venv/bin/python -m bench.plot [--results FILE] [--out FILE]
    .venv/bin/python -m bench.plot --figure scale [--results FILE] [--out FILE]

With ``--figure scale`` it draws docs/img/rooms_at_scale.png from bench/results/simulate_sizes.json
(``bench.simulate_sizes``) instead: two panels against room size, tree push and flooding, on the
three-ring mesh and the old chordal ring: p95 latency from send to shown, and frames per
delivered message. The default figure, dissemination:

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
from tests.peer.simnet import HOP_LIMIT

DEFAULT_OUT = BENCH_DIR.parent / "docs" / "img" / "dissemination.png"
FIGURES = {
    "dissemination": (RESULTS_DIR / "dissemination.json", DEFAULT_OUT),
    "scale": (RESULTS_DIR / "simulate_sizes.json", DEFAULT_OUT.parent / "rooms_at_scale.png"),
}


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


def plot_scale(results: Path, out: Path) -> Path:
    """p95 latency and payload frames per delivery against room size, from simulate_sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    doc = json.loads(results.read_text())
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in doc["rows"]:
        series.setdefault((r["mesh"], r["design"]), []).append(r)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {"tree": "tab:green", "flood": "tab:blue"}
    marks = {"tree": ("o", 5), "flood": ("s", 9)}  # flood's larger squares show behind tree's dots
    names = {"new": "three-ring mesh", "old": "old chordal ring"}
    for (mesh, design), rs in sorted(series.items(), key=lambda kv: (kv[0][0] != "new", kv[0])):
        rs.sort(key=lambda r: r["members"])
        ns = [r["members"] for r in rs]
        style = "-" if mesh == "new" else ":"
        label = f"{design}, {names.get(mesh, mesh)}"
        c = colours.get(design, "k")
        marker, size = marks.get(design, ("o", 5))
        line = {"color": c, "marker": marker, "markersize": size, "label": label}
        if design == "flood":
            line |= {"markerfacecolor": "none"}
        axes[0].plot(ns, [r["p95_ms"] for r in rs], style, **line)
        short = [r for r in rs if r["delivered_ratio"] < 1]
        for k, r in enumerate(short if design == "tree" else []):
            axes[0].annotate(
                f"{r['delivered_ratio']:.0%} of members reached\n(hop limit {HOP_LIMIT})",
                (r["members"], r["p95_ms"]),
                textcoords="offset points",
                xytext=(-150, -10 - 20 * k),
                fontsize=8,
                arrowprops={"arrowstyle": "->", "color": "grey"},
            )
        if mesh == "new":
            frames = [r["payload_frames_per_delivery"] for r in rs]
            axes[1].plot(ns, frames, style, **line)
            if design == "tree":
                ihave = [r["ihave_frames_per_delivery"] for r in rs]
                axes[1].plot(
                    ns,
                    ihave,
                    "--",
                    color=c,
                    alpha=0.5,
                    marker=".",
                    label="tree: ihave frames (ids only) per delivery",
                )
    first = doc["rows"][0]
    m = doc.get("machine", {})
    axes[0].set_title(
        f"latency send to shown, p95 ({first['latency_ms']:g} ms a link, "
        f"\u00b1{first['spread']:.0%}, jitter {first['jitter']:g})"
    )
    axes[0].set_ylabel("ms (log scale)")
    axes[0].set_yscale("log")
    plain = plt.FuncFormatter(lambda v, _: f"{v:,.0f}")
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(plain)
    axes[0].tick_params(axis="y", which="minor", labelsize=7)
    axes[1].set_title("frames per delivered message, three-ring mesh")
    axes[1].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("room size N (members online)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"rooms at scale, simulated (router engine, {first['messages']} messages from "
        f"{first['senders']} senders, seed {first['seed']}) - {m.get('cores', '?')} cores, "
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
    p.add_argument("--figure", choices=sorted(FIGURES), default="dissemination")
    p.add_argument("--results", type=Path, default=None, help="default: the figure's results")
    p.add_argument("--out", type=Path, default=None, help="default: the figure's image")
    args = p.parse_args(argv)
    results, out = FIGURES[args.figure]
    draw = plot_scale if args.figure == "scale" else plot
    print(f"wrote {draw(args.results or results, args.out or out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
