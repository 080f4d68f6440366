"""The peer abuse benchmark runs end to end (a registry, the victim's and the honest users'
processes, one attack) and prints its table. A smoke test only: nothing here depends on how
fast anything went."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import peer_abuse


def test_one_small_attack_runs_and_prints_its_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "peer_abuse.json"
    argv = ["--attacks", "fuzz", "--seconds", "1", "--scale", "0.1", "--json", str(results)]
    assert peer_abuse.main(argv) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "command:" in out and "room p50 ms" in out
    [row] = json.loads(results.read_text())["rows"]
    assert row["attack"] == "fuzz" and row["attacker_frames"] > 0
    assert row["room_said"] > 0 and row["dm_sent"] > 0
