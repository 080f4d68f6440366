"""Shared pieces of the benchmarks: the machine line, tables, statistics, /proc readings,
an in-process registry with pre-made accounts, and the JSON results files."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from p2pchat.registry.core import RegistryConfig
from p2pchat.registry.passwords import Passwords
from p2pchat.registry.server import RegistryServer
from p2pchat.store import SqliteStore

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
PASSWORD = "bench-password"
ROOM = "bench"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- machine and command


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, Python and kernel: printed beside every table."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine()
    return (
        f"machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}, "
        f"Python {m['python']}, Linux {m['kernel']}"
    )


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command as typed: ``argv`` when given (a call from Python), else this process's."""
    return shlex.join([".venv/bin/python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def results_path(out: Path | None, quick: bool, name: str) -> Path | None:
    """Where a benchmark writes its results: ``--out``, else ``bench/results/NAME.json``
    (a ``--quick`` run writes nothing unless given ``--out``)."""
    if out is not None:
        return out
    return None if quick else RESULTS_DIR / f"{name}.json"


# ---------------------------------------------------------------- statistics and tables


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (need not be sorted); NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(q / 100.0 * len(ordered) + 0.999999) - 1))
    return ordered[k]


def median(values: Iterable[float]) -> float:
    vals = sorted(v for v in values if v == v)  # drop NaN
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


# ---------------------------------------------------------------- /proc


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size now."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_bytes(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of the process so far."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | str = "self") -> tuple[float, float]:
    """(user, system) CPU seconds used by the process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def raise_nofile(want: int | None = None) -> int:
    """Raise the soft limit on open files to the hard limit; returns the new soft limit.

    With ``want``, first try to raise both limits to it (as far as ``fs.nr_open`` allows):
    that takes root (``CAP_SYS_RESOURCE``); without it the hard limit stays as it was.
    Processes started afterwards inherit the limits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want is not None and want > hard:
        try:
            ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            ceiling = want
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, ceiling),) * 2)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- registry


_hash_cache: dict[str, str] = {}


def password_hash(profile: str = "cheapest") -> str:
    """One Argon2id hash of ``PASSWORD``, shared by every benchmark account."""
    if profile not in _hash_cache:
        _hash_cache[profile] = Passwords(profile).hash(PASSWORD)  # type: ignore[arg-type]
    return _hash_cache[profile]


def populate(
    store: SqliteStore,
    users: Sequence[str],
    rooms: dict[str, Sequence[str]],
    profile: str = "cheapest",
) -> None:
    """Create ``users`` (all with ``PASSWORD``) and public ``rooms`` (first member owns)."""
    digest = password_hash(profile)
    for user in users:
        store.create_account(user, digest)
    for room, members in rooms.items():
        store.create_room(room, False, members[0])
        for member in members[1:]:
            store.add_member(room, member)


# Benchmark accounts are made directly in the store, so no benchmark sends ``Register``; the
# per-address registration rate limit (``register_rate``/``register_burst``, 1/s after a burst
# of 30 by default) is still set out of reach explicitly, since every benchmark user shares
# 127.0.0.1. The login throttles stay at their defaults: the per-address one is charged only
# for failed logins and the per-account one is cleared by a successful login, and benchmark
# logins all succeed (one at a time per account).
BENCH_REGISTER_RATE = 1e9
BENCH_REGISTER_BURST = 1_000_000_000


def bench_registry_config() -> RegistryConfig:
    """The registry configuration of every benchmark: production defaults (heartbeats every
    20 s, 60 s timeout, login throttles), registration rate limit out of reach."""
    return RegistryConfig(
        heartbeat_interval=20.0,
        timeout=60.0,
        register_rate=BENCH_REGISTER_RATE,
        register_burst=BENCH_REGISTER_BURST,
    )


async def start_registry(
    users: Sequence[str], rooms: dict[str, Sequence[str]], *, secure: bool = True
) -> RegistryServer:
    """A real ``RegistryServer`` on 127.0.0.1 (ephemeral ports), cheapest Argon2id profile;
    ``secure`` False serves plain TCP (to measure what TLS costs)."""
    store = SqliteStore(":memory:")
    populate(store, users, rooms)
    server = RegistryServer(
        store,
        host="127.0.0.1",
        port=0,
        udp_port=0,
        config=bench_registry_config(),
        passwords=Passwords("cheapest"),
        secure=secure,
    )
    await server.start()
    return server


def usernames(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


# ---------------------------------------------------------------- results


def save_results(
    name: str,
    command: str,
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    path: Path | None = None,
) -> Path:
    """Write ``bench/results/<name>.json``: the machine, the command, the date and the rows."""
    path = path or RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": name,
        "command": command,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "load_average_at_end": os.getloadavg(),
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    return path


def header(title: str, command: str) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{title}\n{machine_line()}\nload average: {load}\ncommand: {command}\n"


def shown(path: Path) -> str:
    """A results path as printed: relative to the project when it lies inside it."""
    try:
        return str(path.resolve().relative_to(RESULTS_DIR.resolve().parent.parent))
    except ValueError:
        return str(path)


TRUST_MODES = ("on", "unchecked", "off")
"""``on``: TLS, certificates and signed messages, as shipped. ``off``: none of them (the
benchmark-only ``secure=False``). ``unchecked``: as ``on``, but receivers take every signature as
good (benchmark-only, see ``_worker.skip_signature_checks``), to split what trust costs
between TLS with the larger frames and the checking of signatures."""


def trust_modes(text: str, allowed: Sequence[str] = TRUST_MODES) -> list[str]:
    """``on,off`` as ``["on", "off"]``, each mode once, in the order given."""
    out: list[str] = []
    for word in (w.strip().lower() for w in text.split(",")):
        if not word:
            continue
        if word not in allowed:
            raise argparse.ArgumentTypeError(f"--trust takes {', '.join(allowed)}, not {word!r}")
        if word not in out:
            out.append(word)
    if not out:
        raise argparse.ArgumentTypeError(f"--trust needs one of {', '.join(allowed)}")
    return out


def trust_list(text: str) -> list[bool]:
    """``on,off`` as ``[True, False]``: security (TLS, certificates, signatures) on or off."""
    return [mode == "on" for mode in trust_modes(text, ("on", "off"))]


def trust_name(secure: bool) -> str:
    return "on" if secure else "off"


def int_list(text: str) -> list[int]:
    """``10,50,100`` as a list, for flags that take several sizes."""
    return [int(x) for x in text.split(",") if x.strip()]
