"""The sizes sweep of the room simulator writes its rows and the plot draws them.

A smoke test only: benchmarks are not tests, so nothing here depends on how fast it went.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import plot, simulate_sizes


def test_the_sizes_sweep_feeds_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results, image = tmp_path / "sizes.json", tmp_path / "scale.png"
    options = "--messages 3 --senders 2 --mesh-events 2"
    argv = ["--sizes", "20", "--options", options, "--out", str(results)]
    assert simulate_sizes.main(argv) == 0
    rows = json.loads(results.read_text())["rows"]
    assert {(r["mesh"], r["design"]) for r in rows} == {
        (m, d) for m in ("new", "old") for d in ("tree", "flood")
    }
    assert all(r["delivered_ratio"] == 1.0 for r in rows)
    assert plot.main(["--figure", "scale", "--results", str(results), "--out", str(image)]) == 0
    assert image.stat().st_size > 10_000
    capsys.readouterr()
