"""The dissemination benchmark's quick mode runs, delivers everything and prints its table.

A smoke test only: benchmarks are not tests, so nothing here depends on how fast it went.
"""

from __future__ import annotations

import pytest

from bench import dissemination


def test_quick_dissemination_runs_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert dissemination.main(["--quick", "--inline", "--sizes", "5", "--messages", "10"]) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "command:" in out
    rows = [line.split() for line in out.splitlines()]
    designs = {r[2]: r for r in rows if len(r) > 3 and r[0] == "5" and r[2] in {"flood", "naive"}}
    assert set(designs) == {"flood", "naive"}
    for row in designs.values():
        assert row[3] == "100.0%"  # delivery
