"""``bench.simulate`` over room sizes, both designs and both meshes: the figures of the plot.

    .venv/bin/python -m bench.simulate_sizes              # N = 100 ... 10,000, ~6 minutes
    .venv/bin/python -m bench.simulate_sizes --quick      # N = 30 and 100, seconds
    .venv/bin/python -m bench.plot --figure scale         # then draw docs/img/rooms_at_scale.png

Each row is one run of ``python -m bench.simulate`` (router engine) with the options shown in its
``command``; the rows go to bench/results/simulate_sizes.json (or --out), the table to the
screen, and one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench import simulate
from bench.common import RESULTS_DIR, command_line, header, int_list, save_results, shown, table

MODULE = "bench.simulate_sizes"
DEFAULT_OUT = RESULTS_DIR / "simulate_sizes.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int_list, default=[100, 300, 1000, 3000, 10_000])
    p.add_argument("--designs", default="tree,flood", help="tree, flood or both")
    p.add_argument("--meshes", default="new,old", help="new, old or both")
    p.add_argument(
        "--options",
        default="",
        help='more options for every run of bench.simulate, e.g. "--latency-ms 50 --seed 2"',
    )
    p.add_argument("--quick", action="store_true", help="N = 30 and 100, 5 messages")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results file")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(sizes=[30, 100], options="--messages 5 --mesh-events 5")
        args = parser.parse_args(argv)
    command = command_line(MODULE, argv)
    print(header("simulate_sizes: rooms of growing size, both designs, both meshes", command))
    rows = []
    for n in args.sizes:
        for mesh in args.meshes.split(","):
            for design in args.designs.split(","):
                run_argv = [
                    "--members",
                    str(n),
                    "--design",
                    design,
                    "--mesh",
                    mesh,
                    *args.options.split(),
                ]
                run_args = simulate.parse_args(run_argv)
                row = simulate.run(run_args, command_line(simulate.MODULE, run_argv))
                rows.append(row)
                print(
                    f"  N={n:,} {mesh} mesh {design}: delivered {row['delivered_ratio']}, "
                    f"p95 {row['p95_ms']} ms ({row['wall_seconds']} s)",
                    file=sys.stderr,
                    flush=True,
                )
    columns = simulate.COLUMNS
    print(table([c for c, _ in columns], [[r.get(k, "-") for _, k in columns] for r in rows]))
    print(f"results: {shown(save_results('simulate_sizes', command, rows, path=args.out))}")
    print(json.dumps({"benchmark": "simulate_sizes", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
