"""Run ``bench.registry_capacity`` with every garbage collection timed, and say which ones fell
inside the measured open-loop windows (investigation of the registry's p99 at K = 10,000).

    GC_LOG_DIR=/tmp/gcA PYTHONPATH=bench/gcprobe:. .venv/bin/python bench/gcprobe/run.py \\
        --sessions 10000 --repeat 3 --logins 0 --saturate-seconds 1 --out /tmp/capA.json
    GC_VARIANT=freeze GC_LOG_DIR=/tmp/gcB ...          # the registry freezes every second

Arguments go to ``bench.registry_capacity``. The collections of the registry and of the load
generator (this process) are logged by ``sitecustomize.py`` in this folder.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from typing import Any

import bench.registry_capacity as rc

windows: list[dict[str, float]] = []
_open_loop = rc.open_loop


async def _timed_open_loop(*args: Any, **kwargs: Any) -> dict[str, list[float]]:
    t0 = time.time()
    lat = await _open_loop(*args, **kwargs)
    every = [x for key, v in lat.items() if not key.startswith("_") for x in v]
    windows.append(
        {"t0": t0, "t1": time.time(), "p99": rc.percentile(every, 99), "max": max(every)}
    )
    return lat


def report(log_dir: str) -> None:
    procs = []
    for path in sorted(glob.glob(os.path.join(log_dir, "[0-9]*.json"))):
        with open(path) as f:
            doc = json.load(f)
        role = "registry" if "registry" in doc["argv"] else "generator"
        procs.append((role, doc))
    import sitecustomize  # this folder's: the generator's own collections, still in memory

    procs.append(("generator", {"argv": sys.argv, "events": sitecustomize._events}))
    for i, w in enumerate(windows):
        print(f"window {i + 1}: p99 (all requests) {w['p99']:.1f} ms, max {w['max']:.1f} ms")
        for role, doc in procs:
            inside = [e for e in doc["events"] if w["t0"] <= e[0] <= w["t1"]]
            if inside:
                worst = max(inside, key=lambda e: e[2])
                print(
                    f"  {role}: {len(inside)} collections in the window, longest gen{worst[1]} "
                    f"{worst[2]:.1f} ms at {worst[0] - w['t0']:.2f} s"
                )
    for role, doc in procs:
        if role == "registry":
            full = [round(e[2], 1) for e in doc["events"] if e[1] == 2]
            print(f"registry: full collections (ms) {full}, frozen at exit {doc['frozen']}")
    print("(no line for a process in a window: it did not collect there)")


def main() -> int:
    log_dir = os.environ.get("GC_LOG_DIR")
    if not log_dir:
        print("set GC_LOG_DIR and PYTHONPATH=bench/gcprobe:. (see the docstring)")
        return 2
    rc.open_loop = _timed_open_loop  # type: ignore[assignment]
    code = rc.main(sys.argv[1:])
    report(log_dir)
    return code


if __name__ == "__main__":
    sys.exit(main())
