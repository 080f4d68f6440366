"""The history benchmark runs and prints its table and one JSON line.

A smoke test only: benchmarks are not tests, so nothing here depends on how fast it went.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import history


def test_quick_history_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--quick",
        "--missed",
        "100",
        "--disk-messages",
        "500",
        "--out",
        str(tmp_path / "h.json"),
    ]
    assert history.main(argv) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "command:" in out and "catch up 100 from 10 senders" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["catch_up_6_neighbours"]["received_twice"] == 0
    assert summary["disk"]["messages"] == 500
    assert json.loads((tmp_path / "h.json").read_text())["benchmark"] == "history"
