"""The peers' side of the room benchmarks: one ``Worker`` holds some of the room's peers.

A worker runs either in a process of its own (``ProcessWorker``, commands over a pipe) or in the
coordinator's event loop (``InlineWorker``, for the smoke test). Commands, in order: ``setup``
(start and log in the peers), ``converge`` (wait until the mesh is built), ``run`` (send a
schedule of messages and record every delivery), ``saturate`` (send as fast as the room
delivers), ``stop``. Deliveries are recorded as ``(peer index, text, origin ts, shown at)``; the
text starts with the message's sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import importlib
import multiprocessing
import multiprocessing.connection
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bench._rooms import pair_latency
from bench.common import PASSWORD, ROOM, cpu_seconds, peak_rss_bytes, raise_nofile, rss_bytes
from bench.naive import NaivePeer
from p2pchat.peer.actions import Action, CloseLink, SendLink
from p2pchat.peer.events import PeerEvent, RoomText
from p2pchat.peer.mesh import mesh_neighbours
from p2pchat.peer.node import PeerConfig, PeerNode

SEQ_DIGITS = 8
LOGIN_BATCH = 16
PEER_DESIGNS = ("tree", "flood")
"""The real peer's ways of spreading room messages; "naive" is the baseline of bench/naive.py."""


def message_text(seq: int, size: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}" + "x" * max(0, size - SEQ_DIGITS)


class _Node(Protocol):
    username: str | None

    async def say(self, room: str, text: str) -> int: ...

    async def close(self) -> None: ...


def skip_signature_checks() -> Callable[[], None]:
    """Benchmark-only, to measure what checking signatures costs: every peer of this process
    takes every room message's signature as good (origins still sign, frames are unchanged).
    Returns what puts the check back."""
    from p2pchat.peer import core

    original = getattr(core, "check_message", None)
    if original is None:
        raise RuntimeError("p2pchat.peer.core no longer checks signatures with check_message")

    def take_as_good(verifier: object, msg: object, key: bytes | None) -> bool:
        return True

    core.check_message = take_as_good  # type: ignore[assignment]

    def restore() -> None:
        core.check_message = original

    return restore


@dataclass
class _Recorder:
    recs: list[tuple[int, str, float, float]] = field(default_factory=list)
    expected: int = 1 << 62
    done: asyncio.Event = field(default_factory=asyncio.Event)
    counts: dict[str, int] | None = None
    """Saturation: deliveries here per message (by its sequence prefix)."""
    need: int = 0
    """Saturation: deliveries here that complete a message sent from this worker..."""
    need_other: int = 0
    """... and one sent from another worker (all of this worker's peers show it)."""
    own: Callable[[str], bool] | None = None
    """Saturation: whether a message (by its sequence prefix) was sent from this worker."""
    on_complete: Callable[[str], None] | None = None

    def callback(self, index: int) -> Callable[[PeerEvent], None]:
        recs = self.recs
        append = recs.append
        now = time.time

        def on_event(event: PeerEvent) -> None:
            if type(event) is RoomText and not event.mine:
                append((index, event.text, event.ts, now()))
                counts = self.counts
                if counts is not None:
                    key = event.text[:SEQ_DIGITS]
                    c = counts.get(key, 0) + 1
                    counts[key] = c
                    own = self.own
                    need = self.need if own is None or own(key) else self.need_other
                    if c == need and self.on_complete is not None:
                        self.on_complete(key)
                if len(recs) >= self.expected:
                    self.done.set()

        return on_event

    def reset(self, expected: int) -> None:
        self.recs.clear()
        self.expected = expected
        self.done = asyncio.Event()
        if expected <= 0:
            self.done.set()


class _Acks(asyncio.DatagramProtocol):
    """Saturation over several processes: another worker's peers have all shown one of our
    messages (one datagram per message and worker, on 127.0.0.1)."""

    def __init__(self, on_ack: Callable[[str], None]) -> None:
        self.on_ack = on_ack

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.on_ack(data.decode())


class DelayedNode(PeerNode):
    """A peer whose every write on a link leaves after that link's one-way latency: links of
    a wide-area network, in user space (this machine's kernel has no netem). The latency of
    the link between two users is ``latency_of(a, b)`` seconds, as the simulator draws it;
    frames on one link keep their order (one latency per link)."""

    def __init__(
        self,
        config: PeerConfig,
        on_event: Callable[[PeerEvent], None],
        *,
        latency_of: Callable[[str, str], float],
    ) -> None:
        super().__init__(config, on_event)
        self.latency_of = latency_of

    def apply(self, actions: list[Action]) -> None:
        loop = asyncio.get_running_loop()
        kept: list[Action] = []
        for action in actions:
            if not isinstance(action, SendLink | CloseLink):
                kept.append(action)
                continue
            peer, me = self.core.link_peer(action.link), self.core.username
            link = self.links.get(action.link)
            if peer is None or me is None or link is None:
                kept.append(action)
            elif isinstance(action, SendLink):
                loop.call_later(self.latency_of(me, peer), link.send, action.data)
            else:  # after what was written before it, as TCP would
                loop.call_later(self.latency_of(me, peer), link.close, action.abort)
        super().apply(kept)


class Worker:
    """Holds some peers of one room and carries out the coordinator's commands."""

    node_class: type[PeerNode] = PeerNode
    """What ``setup`` makes for the peer's own designs (benchmarks may time a subclass)."""

    def __init__(self) -> None:
        self.nodes: list[_Node] = []
        self.by_name: dict[str, _Node] = {}
        self.rec = _Recorder()
        self.mode = "tree"
        self.max_links = 6
        self.rss_base = 0
        self._home: tempfile.TemporaryDirectory[str] | None = None
        self._sat: _Saturation | None = None
        self._restore: Callable[[], None] | None = None
        self._acks: asyncio.DatagramTransport | None = None
        self._expected_cache: dict[tuple[str, str], frozenset[str]] = {}

    async def handle(self, cmd: str, arg: dict[str, Any]) -> Any:
        method = getattr(self, f"cmd_{cmd}")
        return await method(**arg)

    # ------------------------------------------------------------------ setup

    async def cmd_setup(
        self,
        registry_port: int,
        users: list[str],
        mode: str = "tree",
        max_links: int = 6,
        secure: bool = True,
        home: str | None = None,
        check_signatures: bool = True,
        link_delay_ms: float = 0.0,
        link_spread: float = 0.5,
        delay_seed: int = 1,
    ) -> dict[str, Any]:
        """``secure``: TLS, certificates and signatures (False: none, to measure their cost).
        ``home``: the folder for the peers' keys, certificates and pinned registry (a private
        temporary one, removed at ``stop``, if None); never the user's own.
        ``check_signatures`` False: see ``skip_signature_checks``. ``link_delay_ms``: each
        link's one-way latency, drawn as the simulator draws it (``DelayedNode``)."""
        latency_of = (
            pair_latency(delay_seed, link_delay_ms / 1000, link_spread) if link_delay_ms else None
        )
        if not check_signatures and self._restore is None:
            self._restore = skip_signature_checks()
        gc.collect()
        self.rss_base = rss_bytes()
        self.mode = mode
        self.max_links = max_links
        if home is None:
            self._home = tempfile.TemporaryDirectory(prefix="p2pchat-bench-")
            home = self._home.name
        data, conf = os.path.join(home, "data"), os.path.join(home, "config")
        t0 = time.perf_counter()
        for i, user in enumerate(users):
            node: _Node
            if mode in PEER_DESIGNS:
                config = PeerConfig(
                    design=mode,  # type: ignore[arg-type]
                    registry_port=registry_port,
                    listen_host="127.0.0.1",
                    max_links=max_links,
                    send_rate=1e9,  # the benchmark measures the mesh, not the rate limits
                    send_burst=10**9,
                    receive_rate=1e9,
                    receive_burst=10**9,
                    secure=secure,
                    data_dir=data,
                    config_dir=conf,
                )
                if latency_of is not None:
                    node = DelayedNode(config, self.rec.callback(i), latency_of=latency_of)
                else:
                    node = self.node_class(config, self.rec.callback(i))
            else:
                node = NaivePeer(registry_port, self.rec.callback(i), secure=secure)
            self.nodes.append(node)
            self.by_name[user] = node
        for k in range(0, len(users), LOGIN_BATCH):
            batch = list(
                zip(users[k : k + LOGIN_BATCH], self.nodes[k : k + LOGIN_BATCH], strict=True)
            )
            await asyncio.gather(*(self._login(node, user) for user, node in batch))
        return {"login_s": time.perf_counter() - t0, "pid": os.getpid()}

    async def cmd_warm(self, senders: list[str]) -> dict[str, Any]:
        """Naive design: let the senders open their connections before anything is timed."""
        mine = [self.by_name[s] for s in senders if s in self.by_name]
        await asyncio.gather(*(n.warm(ROOM) for n in mine if isinstance(n, NaivePeer)))
        return {}

    async def _login(self, node: _Node, user: str) -> None:
        await node.start()  # type: ignore[attr-defined]
        await node.login(user, PASSWORD)  # type: ignore[attr-defined]

    def converged(self, online: list[str], key: str = "") -> bool:
        if self.mode not in PEER_DESIGNS:
            return True
        for node in self.nodes:
            me = node.username
            if me is None or me not in online:
                continue
            expected = self._expected_cache.get((key, me))
            if expected is None:
                expected = mesh_neighbours(online, me, self.max_links)
                if key:
                    self._expected_cache[key, me] = expected
            links = node.core.links
            for peer in expected:
                link = links.get(peer)
                if link is None or ROOM not in link.view.mine or ROOM not in link.view.theirs:
                    return False
        return True

    async def cmd_converge(
        self, online: list[str], timeout: float = 30.0, tidy: float = 0.0, gc_freeze: bool = False
    ) -> dict[str, Any]:
        """Wait until every peer holds its mesh links; then up to ``tidy`` s more until the
        links kept during login (grace period) are closed."""
        t0 = time.perf_counter()
        ok = False
        while time.perf_counter() - t0 < timeout:
            if self.converged(online, "converge"):
                ok = True
                break
            await asyncio.sleep(0.02)
        t_conv = time.perf_counter() - t0
        if ok and self.mode in PEER_DESIGNS and tidy > 0:
            t1 = time.perf_counter()
            want = {
                n.username: len(mesh_neighbours(online, n.username or "", self.max_links))
                for n in self.nodes
            }
            while time.perf_counter() - t1 < tidy:
                if all(len(n.core.links) <= want[n.username] for n in self.nodes):
                    break
                await asyncio.sleep(0.05)
        missing = [] if ok else self.missing(online)
        self._expected_cache.clear()
        if gc_freeze:
            gc.collect()
            gc.freeze()
        return {
            "converged": ok,
            "seconds": t_conv,
            "links": [_link_count(n) for n in self.nodes],
            "rss": rss_bytes(),
            "missing": missing,
        }

    def missing(self, online: list[str]) -> list[str]:
        """For a report: the mesh links not (fully) there."""
        out = []
        for node in self.nodes:
            me = node.username or ""
            for peer in sorted(mesh_neighbours(online, me, self.max_links)):
                link = node.core.links.get(peer)
                if link is None:
                    out.append(f"{me}->{peer}: no link")
                elif ROOM not in link.view.mine or ROOM not in link.view.theirs:
                    out.append(
                        f"{me}->{peer}: mine={sorted(link.view.mine)} "
                        f"theirs={sorted(link.view.theirs)}"
                    )
        return out[:20]

    # ------------------------------------------------------------------ measuring

    def _counters(self) -> list[tuple[int, int, int]]:
        out = []
        for node in self.nodes:
            if isinstance(node, PeerNode):
                r = node.core.router
                sent = r.payloads_out if r is not None else 0
            else:
                r = node.router  # type: ignore[attr-defined]
                sent = r.frames_out
            out.append((sent, r.duplicates, r.delivered) if r is not None else (0, 0, 0))
        return out

    async def cmd_run(
        self,
        sends: list[tuple[float, str, str]],
        t0: float,
        expected: int,
        drain: float = 5.0,
        monitor: dict[str, list[str]] | None = None,
        last: float = 0.0,
    ) -> dict[str, Any]:
        """Send ``(offset, sender, text)`` at wall time ``t0 + offset``; record deliveries
        until ``expected`` of them arrived here, or ``drain`` s after the last send is due
        (``last``: the last offset of all workers' sends, for a worker with few or none)."""
        loop = asyncio.get_running_loop()
        self.rec.reset(expected)
        self.rec.counts = None
        before = self._counters()
        cpu0 = cpu_seconds()
        fanouts: list[int] = []
        lags: list[float] = []
        tasks: set[asyncio.Task[int]] = set()
        transitions: list[tuple[float, str, bool]] = []
        stop_monitor = asyncio.Event()

        async def watch() -> None:
            assert monitor is not None
            state: dict[str, bool] = {}
            while not stop_monitor.is_set():
                now = time.time()
                for name, online in monitor.items():
                    ok = self.converged(online, name)
                    if state.get(name) != ok:
                        state[name] = ok
                        transitions.append((now, name, ok))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch()) if monitor else None
        base = loop.time() + (t0 - time.time())
        for offset, sender, text in sends:
            delay = base + offset - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(loop.time() - base - offset)
            node = self.by_name[sender]
            task = asyncio.ensure_future(node.say(ROOM, text))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            task.add_done_callback(
                lambda t: fanouts.append(t.result()) if not t.exception() else None
            )
        last = max([last, *(o for o, _, _ in sends)])
        remaining = base + last + drain - loop.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.rec.done.wait(), max(0.0, remaining))
        if watcher is not None:
            stop_monitor.set()
            await watcher
        cpu1 = cpu_seconds()
        after = self._counters()
        return {
            "recs": list(self.rec.recs),
            "fanouts": fanouts,
            "lags": lags,
            "counters": [
                tuple(a - b for a, b in zip(x, y, strict=True))
                for x, y in zip(after, before, strict=True)
            ],
            "cpu_user": cpu1[0] - cpu0[0],
            "cpu_sys": cpu1[1] - cpu0[1],
            "peak_rss": peak_rss_bytes(),
            "rss": rss_bytes(),
            "rss_base": self.rss_base,
            "links": [_link_count(n) for n in self.nodes],
            "transitions": transitions,
            "pid": os.getpid(),
        }

    async def cmd_sat_open(self) -> dict[str, Any]:
        """Saturation over several processes: a UDP port for the others' completion notices."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Acks(self._ack), local_addr=("127.0.0.1", 0)
        )
        self._acks = transport
        return {"port": transport.get_extra_info("sockname")[1]}

    def _ack(self, key: str) -> None:
        if self._sat is not None:
            self._sat.part_done(key)

    async def cmd_saturate(
        self,
        senders: list[str],
        window: int,
        total: int,
        seconds: float,
        size: int,
        first_seq: int,
        profile: str | None = None,
        index: int = 0,
        stride: int = 1,
        ports: list[int] | None = None,
        start: float | None = None,
    ) -> dict[str, Any]:
        """Keep ``window`` messages from ``senders`` (peers of this worker) in flight; a message
        is done when all other peers of the room showed it. With several workers (``stride``
        of them, this one number ``index``, their UDP ``ports``), worker k sends the sequence
        numbers ``first_seq + k + stride * i`` and hears from the others (``cmd_sat_open``)
        when their peers have all shown one of its messages. Sending starts at wall time
        ``start`` (now if None). Deliveries are recorded until ``sat_end``."""
        import random

        rng = random.Random(first_seq + index)
        sat = self._sat = _Saturation(self, window, first_seq, index, stride, ports or [])
        rec = self.rec
        rec.reset(1 << 62)
        rec.counts = {}
        rec.need = len(self.nodes) - 1
        rec.need_other = len(self.nodes)
        rec.own = sat.is_own if stride > 1 else None
        rec.on_complete = sat.local_done
        if start is not None:
            await asyncio.sleep(max(0.0, start - time.time()))
        sat.before = self._counters()
        sat.cpu0 = cpu_seconds()
        prof = cProfile.Profile() if profile else None
        if prof is not None:
            prof.enable()
        t0 = time.perf_counter()
        wall0 = time.time()
        sent = 0
        tasks: set[asyncio.Task[int]] = set()
        while senders and sent < total and time.perf_counter() - t0 < seconds:
            await sat.slots.acquire()
            sat.outstanding += 1
            text = message_text(first_seq + index + stride * sent, size)
            task = asyncio.ensure_future(self.by_name[rng.choice(senders)].say(ROOM, text))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            if rec.need == 0:  # the sender is this worker's only peer
                sat.local_done(text[:SEQ_DIGITS])
        sat.stopped = True
        if sat.outstanding == 0:
            sat.all_done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sat.all_done.wait(), 10.0)
        elapsed = time.perf_counter() - t0
        if prof is not None:
            prof.disable()
            prof.dump_stats(profile)  # type: ignore[arg-type]
        return {
            "sent": sent,
            "complete": sat.complete,
            "elapsed": elapsed,
            "wall0": wall0,
            "wall1": wall0 + elapsed,
        }

    async def cmd_sat_end(self) -> dict[str, Any]:
        """Stop recording the saturation run: deliveries here, their latencies, counters, CPU."""
        sat, self._sat = self._sat, None
        assert sat is not None
        cpu1 = cpu_seconds()
        after = self._counters()
        rec = self.rec
        lat = [now - ts for _, _, ts, now in rec.recs]
        rec.counts = None
        rec.on_complete = None
        rec.own = None
        if self._acks is not None:
            self._acks.close()
            self._acks = None
        return {
            "deliveries": len(rec.recs),
            "latencies": lat,
            "counters": [
                tuple(a - b for a, b in zip(x, y, strict=True))
                for x, y in zip(after, sat.before, strict=True)
            ],
            "cpu_user": cpu1[0] - sat.cpu0[0],
            "cpu_sys": cpu1[1] - sat.cpu0[1],
        }

    async def cmd_stop(self) -> dict[str, Any]:
        await asyncio.gather(*(n.close() for n in self.nodes), return_exceptions=True)
        self.nodes.clear()
        self.by_name.clear()
        if self._home is not None:
            self._home.cleanup()
            self._home = None
        if self._restore is not None:
            self._restore()
            self._restore = None
        return {}


class _Saturation:
    """One worker's share of a saturation run: its window of messages in flight, and which of
    its messages all peers (here and in the other workers) have shown."""

    def __init__(
        self, worker: Worker, window: int, first_seq: int, index: int, stride: int, ports: list[int]
    ) -> None:
        self.slots = asyncio.Semaphore(window)
        self.all_done = asyncio.Event()
        self.outstanding = 0
        self.stopped = False
        self.complete = 0
        self.first_seq = first_seq
        self.index = index
        self.stride = stride
        self.parts: dict[str, int] = {}
        """Our messages: how many workers (this one included) have shown them everywhere."""
        self.ports = ports
        self.worker = worker
        self.before: list[tuple[int, int, int]] = []
        self.cpu0 = (0.0, 0.0)

    def is_own(self, key: str) -> bool:
        return (int(key) - self.first_seq) % self.stride == self.index

    def local_done(self, key: str) -> None:
        """All this worker's peers showed message ``key``."""
        if self.stride == 1 or self.is_own(key):
            self.part_done(key)
            return
        origin = (int(key) - self.first_seq) % self.stride
        acks = self.worker._acks
        if acks is not None:
            acks.sendto(key.encode(), ("127.0.0.1", self.ports[origin]))

    def part_done(self, key: str) -> None:
        c = self.parts.get(key, 0) + 1
        if c < self.stride:
            self.parts[key] = c
            return
        self.parts.pop(key, None)
        self.complete += 1
        self.slots.release()
        self.outstanding -= 1
        if self.stopped and self.outstanding == 0:
            self.all_done.set()


# ---------------------------------------------------------------- transports


class InlineWorker:
    """A worker in the caller's own event loop (and process)."""

    def __init__(self, worker: Worker | None = None) -> None:
        self.worker = worker or Worker()
        self.pid = os.getpid()

    async def call(self, cmd: str, **arg: Any) -> Any:
        return await self.worker.handle(cmd, arg)

    def kill(self) -> None:
        raise RuntimeError("an inline worker cannot be killed")

    async def close(self) -> None:
        return None


def _serve(conn: multiprocessing.connection.Connection, kind: str) -> None:
    raise_nofile()
    module, _, name = kind.partition(":")
    worker_class = getattr(importlib.import_module(module), name)

    async def main() -> None:
        worker = worker_class()
        loop = asyncio.get_running_loop()
        while True:
            try:
                cmd, arg = await loop.run_in_executor(None, conn.recv)
            except EOFError:
                return
            try:
                result = ("ok", await worker.handle(cmd, arg))
            except Exception:
                result = ("error", traceback.format_exc())
            conn.send(result)
            if cmd == "stop":
                return

    asyncio.run(main())


class ProcessWorker:
    """A worker in a process of its own, started with the ``spawn`` method; ``kind`` names
    its class (``module:Class``, a ``Worker``)."""

    def __init__(self, kind: str = "bench._worker:Worker") -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, kind), daemon=True)
        self.proc.start()
        child.close()
        self.pid = self.proc.pid or 0

    async def call(self, cmd: str, **arg: Any) -> Any:
        loop = asyncio.get_running_loop()

        def roundtrip() -> Any:
            self._conn.send((cmd, arg))
            return self._conn.recv()

        status, payload = await loop.run_in_executor(None, roundtrip)
        if status != "ok":
            raise RuntimeError(f"worker {self.pid} failed on {cmd}:\n{payload}")
        return payload

    def kill(self) -> None:
        """SIGKILL: the peers die abruptly, the kernel resets their connections."""
        self.proc.kill()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.proc.join, 10.0)
        if self.proc.is_alive():
            self.proc.kill()
            await loop.run_in_executor(None, self.proc.join, 5.0)
        self._conn.close()


AnyWorker = InlineWorker | ProcessWorker


def _link_count(node: _Node) -> int:
    """Links a peer holds: mesh links of a flooding peer, connections of a naive one."""
    return len(node.core.links) if isinstance(node, PeerNode) else len(node.links)
