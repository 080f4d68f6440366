"""The room simulator runs with both engines and designs, and its JSON line makes sense.

A smoke test only: benchmarks are not tests, so nothing here depends on how fast it went.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import simulate

ROOT = Path(simulate.__file__).resolve().parent.parent

KEYS = {
    "members",
    "delivered_ratio",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_hops",
    "payload_frames_per_delivery",
    "links_per_member_max",
    "link_changes_per_join",
    "design",
    "engine",
    "seed",
    "latency_ms",
    "loss",
    "kill",
    "wall_seconds",
}


def last_json(out: str) -> dict[str, Any]:
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return row


@pytest.mark.parametrize("engine", ["router", "core"])
@pytest.mark.parametrize("design", ["tree", "flood"])
def test_a_small_room_delivers_everything(
    engine: str, design: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--members", "30", "--messages", "5", "--senders", "3", "--mesh-events", "3"]
    assert simulate.main([*argv, "--engine", engine, "--design", design]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "command:" in out and "p95 ms" in out
    row = last_json(out)
    assert set(row) >= KEYS
    assert (row["members"], row["engine"], row["design"]) == (30, engine, design)
    assert row["delivered_ratio"] == 1.0
    assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
    assert row["max_hops"] >= 1
    # one payload per delivery on a tree; about degree - 1 per delivery when flooding
    assert 1.0 <= row["payload_frames_per_delivery"] <= (1.2 if design == "tree" else 6)
    assert 2 <= row["links_per_member_max"] <= 6
    assert 0 < row["link_changes_per_join"] <= 9


def test_both_engines_see_the_same_links(capsys: pytest.CaptureFixture[str]) -> None:
    """Same seed, same room: the whole peers' latencies are the routers' to within jitter."""
    rows = []
    for engine in ("router", "core"):
        simulate.main(["--members", "20", "--messages", "4", "--engine", engine])
        rows.append(last_json(capsys.readouterr().out))
    router, core = rows
    assert core["p50_ms"] == pytest.approx(router["p50_ms"], rel=0.1)
    assert core["max_hops"] == router["max_hops"]


def test_a_kill_leaves_the_living_served(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--members", "40", "--messages", "5", "--kill", "0.4", "--mesh-events", "0"]
    assert simulate.main(argv) == 0
    row = last_json(capsys.readouterr().out)
    assert row["alive"] == 24 and row["kill"] == 0.4
    assert row["delivered_ratio"] == 1.0


def test_the_same_seed_gives_the_same_run_in_any_process() -> None:
    """Sets of names iterate in another order in each process (string hashing is randomised);
    the run must not depend on it."""
    argv = ["--members", "30", "--messages", "5", "--loss", "0.05", "--mesh-events", "0"]
    rows = []
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "bench.simulate", *argv],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            cwd=ROOT,
        )
        row = last_json(done.stdout)
        del row["wall_seconds"]
        rows.append(row)
    assert rows[0] == rows[1]
    assert rows[0]["frames_lost"] > 0 and rows[0]["grafted"] > 0  # the draws mattered


def test_runs_are_added_to_a_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sim.json"
    base = ["--members", "10", "--messages", "2", "--senders", "2", "--mesh-events", "0"]
    for argv in (base, [*base, "--design", "flood"], base):
        simulate.main([*argv, "--out", str(out)])
    capsys.readouterr()
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "simulate" and "machine" in doc
    assert [r["design"] for r in doc["rows"]] == ["flood", "tree"]  # the rerun replaced its row


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--members", "1"], "--members"),
        (["--members", "ten"], "--members"),
        (["--design", "gossip"], "--design"),
        (["--loss", "1.5"], "--loss"),
        (["--kill", "-0.1"], "--kill"),
        (["--latency-ms", "0"], "--latency-ms"),
        (["--members", "5", "--senders", "6"], "--senders"),
        (["--members", "5", "--kill", "0.9"], "--kill"),
        (["--engine", "core", "--members", "501"], "--engine core"),
        (["--engine", "core", "--members", "50", "--mesh", "old"], "--mesh old"),
        (["--no-such-option"], "unrecognized"),
    ],
)
def test_bad_options_exit_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        simulate.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err
