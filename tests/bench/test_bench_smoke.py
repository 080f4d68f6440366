"""The benchmarks' quick modes run, deliver everything and print their tables.

Smoke tests only: benchmarks are not tests, so nothing here depends on how fast it went.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import calibrate, dissemination, links, wire


def _rows(out: str, n: str) -> list[list[str]]:
    return [line.split() for line in out.splitlines() if line.split()[:1] == [n]]


def test_quick_dissemination_runs_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--quick", "--inline", "--sizes", "5", "--messages", "10", "--trust", "off"]
    assert dissemination.main(args) == 0
    out = capsys.readouterr().out
    assert "machine:" in out and "command:" in out
    kinds = {"tree", "flood", "naive"}
    designs = {r[2]: r for r in _rows(out, "5") if len(r) > 4 and r[2] in kinds}
    assert set(designs) == kinds
    for row in designs.values():
        assert row[3] == "off"
        assert row[4] == "100.0%"  # delivery


def test_quick_dissemination_with_trust_on_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--quick", "--inline", "--sizes", "5", "--messages", "10", "--designs", "tree"]
    args += ["--trust", "on,unchecked,off"]
    assert dissemination.main(args) == 0
    out = capsys.readouterr().out
    modes = {"on", "unchecked", "off"}
    trust = {r[3]: r for r in _rows(out, "5") if len(r) > 4 and r[2] == "tree" and r[3] in modes}
    assert set(trust) == modes
    for row in trust.values():
        assert row[4] == "100.0%"
    assert "trust on / trust off, same run:" in out
    assert "what trust adds" in out


def test_trust_option_refuses_other_words() -> None:
    with pytest.raises(SystemExit):
        dissemination.parse(["--trust", "maybe"])


def test_quick_wire_counts_the_signature_and_the_tls_records(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert wire.main(["--quick", "--sizes", "100", "--count", "5"]) == 0
    out = capsys.readouterr().out
    sizes = [r for r in (line.split() for line in out.splitlines()) if r[:1] == ["100"]]
    assert sizes and sizes[0][4] == "95"  # the signature field, base64
    paced = [r for r in (line.split() for line in out.splitlines()) if r[:2] == ["on", "paced"]]
    assert paced and float(paced[0][5]) == 22.0  # one TLS 1.3 record per frame


def test_quick_links_makes_links_both_ways(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--quick", "--dialers", "1", "--acceptors", "3", "--handshakes", "5"]
    assert links.main(args) == 0
    out = capsys.readouterr().out
    rows: dict[str, list[str]] = {}
    for r in (line.split() for line in out.splitlines()):
        if r[:1] in (["on"], ["off"]):
            rows.setdefault(r[0], r)  # the first table: the links
    assert rows["on"][1:3] == ["3", "0"] and rows["off"][1:3] == ["3", "0"]  # links, failed


def test_calibrate_compares_a_real_room_with_both_simulations(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["--members", "5", "--procs", "1", "--inline", "--messages", "5", "--rate", "20"]
    args += ["--latency-ms", "20", "--out", str(tmp_path / "calibrate.json")]
    assert calibrate.main(args) == 0
    out = capsys.readouterr().out
    rows = {" ".join(r[:2]): r for r in (line.split() for line in out.splitlines()) if r}
    assert rows["real 1.00"][1] == "1.00"  # everything delivered, with links held 20 ms
    assert float(rows["real 1.00"][3]) >= 20  # p95: at least one link's latency
    assert rows["sim core"][2] == "1.00" and rows["sim router"][2] == "1.00"
    assert "real p95 / simulated (core) p95:" in out
