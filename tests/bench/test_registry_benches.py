"""The registry benchmarks run end to end (the registry command and load worker processes,
all on 127.0.0.0/8) and print their tables. Smoke tests only: nothing depends on speed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import registry_capacity, registry_fanout
from bench._sessions import sources


def _row(out: str, first: str) -> list[str]:
    return next(r for r in (line.split() for line in out.splitlines()) if r[:1] == [first])


def test_capacity_holds_its_sessions_in_worker_processes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["--sessions", "60", "--procs", "2", "--rate", "50", "--seconds", "0.5"]
    argv += ["--saturate-seconds", "0.3", "--repeat", "1", "--logins", "0", "--resumes", "0"]
    argv += ["--out", str(tmp_path / "capacity.json")]
    assert registry_capacity.main(argv) == 0
    row = _row(capsys.readouterr().out, "60")
    assert row[1] == "2.00"  # two worker processes
    assert row[-2:] == ["0.00", "0.00"]  # no session dropped, no request failed


def test_fanout_delivers_every_presence_change_to_the_probe(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["--members", "40", "--procs", "1", "--churners", "2", "--rates", "0,6"]
    argv += ["--seconds", "0.5", "--repeat", "1", "--search-rate", "20", "--page-rate", "4"]
    argv += ["--out", str(tmp_path / "fanout.json")]
    assert registry_fanout.main(argv) == 0
    out = capsys.readouterr().out
    churning = _row(out, "6.00")
    assert churning[-3:] == ["0.00", "0.00", "0.00"]  # none missed, none dropped, no errors
    assert float(churning[7]) > 0  # rows in a page of members


def test_source_addresses_stay_in_127_0_0() -> None:
    assert sources(3) == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    with pytest.raises(ValueError):
        sources(300)
