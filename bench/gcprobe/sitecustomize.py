"""Garbage-collection probe for the benchmarks (investigation only; see ``run.py``).

Imported by every Python process started with this folder on ``PYTHONPATH``. With
``GC_LOG_DIR`` set it times every collection (``gc.callbacks``) and writes
``GC_LOG_DIR/<pid>.json`` at exit: the process's arguments and, per collection, its wall-clock
time, generation, duration in ms and objects collected. With ``GC_VARIANT=freeze`` a registry
process (``registry`` among its arguments) also calls ``gc.freeze()`` every second, as a
periodic freeze in ``p2pchat.cli._run_registry`` would.
"""

import os
import sys

_dir = os.environ.get("GC_LOG_DIR")
if _dir:
    import atexit
    import gc
    import json
    import time

    _events: list[tuple[float, int, float, int]] = []
    _start = [0.0]

    def _timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _start[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _start[0]) * 1000.0
        _events.append((time.time(), info["generation"], ms, info["collected"]))

    gc.callbacks.append(_timed)

    def _dump() -> None:
        doc = {"argv": sys.argv, "events": _events, "frozen": gc.get_freeze_count()}
        with open(os.path.join(_dir, f"{os.getpid()}.json"), "w") as f:
            json.dump(doc, f)

    atexit.register(_dump)

if os.environ.get("GC_VARIANT") == "freeze" and "registry" in sys.argv:
    import gc as _gc
    import threading
    import time as _time

    def _freezer() -> None:
        while True:
            _time.sleep(1.0)
            _gc.freeze()

    threading.Thread(target=_freezer, daemon=True).start()
