"""The random-fault soak: one lab, writers and readers through discovery and the gates for the
whole run, a seeded nemesis (:mod:`dbfence.lab.nemesis`) striking with every fault kind of
:func:`dbfence.lab.faults.all_faults` that the lab can take, and the history checker at every
quiet point and at the end.

The fault kinds are the matrix's :class:`dbfence.lab.faults.Fault` rows as they are: a new row
joins the soak without a change here, held for the nemesis's random duration instead of its own
``hold``. Each fault strikes the node that is primary (or promoting) when it is injected.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from dbfence.lab import mariadb_servers
from dbfence.lab import netns as lab_netns
from dbfence.lab.agent_logs import promises_of, read_agent_logs, read_promises, read_role_changes, tenures_of
from dbfence.lab.agents import AgentTuning
from dbfence.lab.cluster import DcsKind, LabCluster, LabSpec
from dbfence.lab.errors import LabError
from dbfence.lab.fault_labs import move_datadir_to_tmpfs
from dbfence.lab.fault_model import inject, not_injected
from dbfence.lab.faults import Fault, FaultContext, Heal, all_faults
from dbfence.lab.final_state import read_final_state, read_tenures, remember_tenures
from dbfence.lab.history import Attempt, FaultEvent, History, Outcome, Tenure, Verdict, check, outage
from dbfence.lab.nemesis import Burst, NemesisTuning, PlannedFault, Schedule, Trigger, plan
from dbfence.lab.soak_checks import Breach, NodeView, Wholeness, wholeness
from dbfence.lab.soak_clients import Monitor, PooledReader
from dbfence.lab.soak_report import Counts, FaultRecord, RoleChange
from dbfence.lab.workload import DiscoveryWriter

TABLE = "app.soak"


@dataclass(frozen=True)
class SoakConfig:
    seed: int
    duration: float
    root: Path  # the lab goes in root/lab
    dcs: DcsKind = "etcd"
    nodes: int = 3
    quiet: float = 30.0
    tuning: AgentTuning = field(default_factory=AgentTuning)
    writers: int = 2
    readers: int = 1
    netns: bool | None = None  # None: in namespaces where this machine allows it
    # Only these fault kinds (None: every kind the lab can take). The schedule depends on the
    # seed and on this list, so a replay names the kinds that were used.
    kinds: tuple[str, ...] | None = None
    stop_when_stuck: bool = True  # stop after two quiet checks in a row found it not whole
    nemesis: NemesisTuning = field(default_factory=NemesisTuning)
    used_kinds: tuple[str, ...] = ()  # filled in by the run, for the replay command

    def replay_command(self) -> str:
        kinds = self.used_kinds or self.kinds
        return (f"PYTHONPATH=. .venv/bin/python benchmarks/soak.py --duration {self.duration:g}s "
                f"--seed {self.seed} --dcs {self.dcs} --nodes {self.nodes} --quiet {self.quiet:g} "
                f"--ttl {self.tuning.ttl:g} --margin {self.tuning.margin:g} --rejoin {self.tuning.rejoin}"
                + (" --failsafe" if self.tuning.failsafe else "")
                + (f" {self.nemesis.flags()}" if self.nemesis.flags() else "")
                + (f" --kinds {','.join(kinds)}" if kinds else ""))


def usable_faults(dcs: DcsKind, etcd_members: int, netns: bool, tmpfs: bool = False,
                  failsafe: bool = False) -> list[Fault]:
    """The fault kinds this lab can take (the disk fault needs every data directory on a tmpfs
    of its own, as whichever node is primary may be struck; the failsafe rows need agents with
    failsafe on: some wait for the primary to write on promises)."""
    return [f for f in all_faults() if dcs in f.dcs and (dcs != "etcd" or etcd_members >= f.etcd_members)
            and (tmpfs or not f.tmpfs) and (netns or not f.netns) and (failsafe or not f.failsafe)]


def datadirs_on_tmpfs(lab: LabCluster, size: str = "1g") -> list[Path]:
    """Move every node's data directory onto a tmpfs of its own (root only; before the agents
    start), so that the disk-full fault can strike any primary. Returns the mounts, which the
    caller unmounts after ``lab.down()``. The first node is opened for writes again, as the lab
    left it (every mysqld starts read-only); the replicas keep their replication settings."""
    mounts: list[Path] = []
    for node in list(lab.mysql):
        move_datadir_to_tmpfs(lab, node.name, size, mounts)
    lab.in_client(mariadb_servers.open_for_writes, lab.mysql[0], lab.accounts["agent"])
    return mounts


# ---------------------------------------------------------------------------- the run

@dataclass
class Striking:
    """One fault in flight: its record grows as it is injected and healed."""

    planned: PlannedFault
    fault: Fault
    burst: int
    target: str | None = None
    injected: float | None = None  # wall clock
    healing: float | None = None  # when its heal began
    healed: float | None = None
    error: str | None = None
    problems: tuple[str, ...] = ()
    thread: threading.Thread | None = None


@dataclass
class SoakResult:
    config: SoakConfig
    schedule: Schedule
    started: float  # wall clock
    ended: float
    records: list[FaultRecord]
    counts: Counts
    breaches: list[Breach]
    checks: list[tuple[float, Wholeness]]
    role_changes: list[RoleChange]
    attempts: tuple[Attempt, ...]
    kept: Path | None  # logs and history kept because an invariant broke

    @property
    def ok(self) -> bool:
        return not self.breaches


class Soak:
    def __init__(self, config: SoakConfig, say: Callable[[str], None] = print) -> None:
        self.config = config
        self.say = say
        self.breaches: list[Breach] = []
        self.checks: list[tuple[float, Wholeness]] = []
        self.strikes: list[Striking] = []
        self.burst_ends: dict[int, float] = {}
        self.stop = threading.Event()
        self.started = time.time()
        self.mounts: list[Path] = []  # tmpfs data directories, unmounted after the lab is down
        self.ttl = config.tuning.ttl
        # (when, how many) of the last check that had a primary to count lost writes on
        self.lost_checked: tuple[float, int] | None = None
        self.tenures: dict[int, Tenure] = {}  # every fencing token's tenure read so far in the run

    def rel(self, wall: float) -> float:
        return wall - self.started

    # ------------------------------------------------------------------ lab
    def start_lab(self) -> LabCluster:
        cfg = self.config
        netns = cfg.netns if cfg.netns is not None else lab_netns.unavailable_reason() is None
        lab = LabCluster.up(LabSpec(directory=cfg.root / "lab", mysql_count=cfg.nodes, dcs=cfg.dcs,
                                    etcd_members=3 if cfg.dcs == "etcd" else 1, agents=False,
                                    agent_tuning=cfg.tuning, netns=netns))
        try:
            if os.geteuid() == 0:
                self.mounts = datadirs_on_tmpfs(lab)
            lab.start_agents(cfg.tuning)
        except BaseException:
            self._down(lab)
            raise
        return lab

    def _down(self, lab: LabCluster) -> None:
        try:
            lab.down()
        finally:
            for mount in self.mounts:
                subprocess.run(["umount", str(mount)], check=False, capture_output=True)

    def run(self) -> SoakResult:
        lab = self.start_lab()
        try:
            return self._run(lab)
        finally:
            self._down(lab)

    def _run(self, lab: LabCluster) -> SoakResult:
        cfg = self.config
        faults = {f.name: f for f in usable_faults(cfg.dcs, len(lab.etcd), lab.netns is not None,
                                                   tmpfs=bool(self.mounts), failsafe=cfg.tuning.failsafe)}
        if cfg.kinds is not None:
            unknown = sorted(set(cfg.kinds) - set(faults))
            if unknown:
                raise LabError(f"fault kinds this lab cannot take: {', '.join(unknown)} "
                               f"(it can take {', '.join(sorted(faults))})")
            faults = {name: faults[name] for name in cfg.kinds}
        self.config = cfg = replace(cfg, used_kinds=tuple(sorted(faults)))
        # the lab's agents use at least 10 s with Consul (its minimum session TTL): holds follow
        self.ttl = cfg.tuning.ttl if cfg.dcs == "etcd" else max(cfg.tuning.ttl, 10.0)
        schedule = plan(cfg.seed, cfg.duration, faults, ttl=self.ttl, quiet=cfg.quiet,
                        tuning=cfg.nemesis)
        self.say(schedule.describe())
        primary = lab.wait_settled(timeout=60)
        writer = DiscoveryWriter(lab, TABLE, timeout=2.0, clients=cfg.writers)
        writer.create_table(primary)
        reader = PooledReader(lab, writer, TABLE)
        monitor = Monitor(lab)
        self.started = time.time()
        for client in (writer, reader, monitor):
            lab.in_client(client.start)
        try:
            last_primary = primary
            for burst in schedule.bursts:
                if self.rel(time.time()) + burst.gap >= cfg.duration:
                    break
                last_primary = self._burst(lab, burst, faults, writer, monitor, last_primary)
                if self.stop.wait(cfg.quiet):
                    break
                self._quiet_check(lab, writer, reader, monitor, burst.index)
                last_primary = monitor.target(last_primary)
                if cfg.stop_when_stuck and len(self.checks) >= 2 and \
                        not any(whole.whole for _, whole in self.checks[-2:]):
                    self.say(f"[{self.rel(time.time()):7.1f}s] not whole after two quiet periods in a row: "
                             f"the cluster is stuck, the run stops here (--keep-going to go on)")
                    break
        finally:
            writer.finish()
            reader.finish()
            monitor.finish()
        ended = time.time()
        final = self._quiet_check(lab, writer, reader, monitor, None)
        role_changes = read_role_changes(lab, self.started)
        records = self._records(writer, role_changes)
        kept = self._keep(lab, writer, reader, records) if self.breaches else None
        counts = Counts(acknowledged=final.acknowledged, refused=final.refused, unknown=final.unknown,
                        unknown_landed=len(final.unknown_landed), reads=len(reader.reads),
                        lost=0 if self.lost_checked is None else self.lost_checked[1],
                        two_writers=final.overlapping,
                        stale_reads=len(final.stale_reads), quiet_checks=len(self.checks),
                        not_whole=sum(1 for _, w in self.checks if not w.whole),
                        extra={"failed_reads": reader.failed, "unleased": len(final.unleased),
                               "promises": len(read_promises(lab)),
                               # lost writes are counted on a primary: when the run ended without
                               # one, the figure is that of the last check that had one
                               "lost_checked_at_s": -1 if self.lost_checked is None
                               else round(self.lost_checked[0])})
        return SoakResult(cfg, schedule, self.started, ended, records, counts, self.breaches, self.checks,
                          role_changes, tuple(writer.attempts), kept)

    # ------------------------------------------------------------------ bursts
    def _burst(self, lab: LabCluster, burst: Burst, faults: dict[str, Fault], writer: DiscoveryWriter,
               monitor: Monitor, last_primary: str) -> str:
        if self.stop.wait(burst.gap):
            return last_primary
        self.say(f"[{self.rel(time.time()):7.1f}s] burst {burst.index}")
        previous: Striking | None = None
        mine: list[Striking] = []
        for planned in burst.faults:
            promoting = self._await_trigger(planned, previous, monitor)
            strike = Striking(planned, faults[planned.kind], burst.index)
            # a promotion overlap strikes the node seen promoting, while it still is (or admits)
            role = monitor.latest.get(promoting, {}).get("role") if promoting is not None else None
            if promoting is not None and role in ("promoting", "primary"):
                strike.target = promoting
            else:
                strike.target = monitor.target(last_primary)
            strike.thread = threading.Thread(target=self._strike, args=(lab, strike, writer),
                                             name=f"nemesis-{planned.kind}", daemon=True)
            lab.in_client(strike.thread.start)  # the thread lives in the client namespace
            self.strikes.append(strike)
            mine.append(strike)
            # wait for the injection itself (some faults build up first, e.g. a lag)
            deadline = time.time() + 60
            while strike.injected is None and strike.error is None and time.time() < deadline:
                time.sleep(0.02)
            previous = strike
        for strike in mine:
            assert strike.thread is not None
            strike.thread.join()
        self.burst_ends[burst.index] = time.time()
        return monitor.target(last_primary)

    def _await_trigger(self, planned: PlannedFault, previous: Striking | None,
                       monitor: Monitor) -> str | None:
        """Wait for the fault's moment; for a promotion overlap, return the node seen promoting."""
        if planned.trigger is Trigger.AT_ONCE or previous is None or previous.injected is None:
            return None
        since, promoting = previous.injected, None
        if planned.trigger is Trigger.PROMOTION:
            give_up = since + 4 * self.ttl + 10
            while (seen := monitor.promotion_after(since)) is None and time.time() < give_up:
                time.sleep(0.02)
            since, promoting = seen if seen is not None else (time.time(), None)
        wait = since + planned.delay - time.time()
        if wait > 0:
            time.sleep(wait)
        return promoting

    def _strike(self, lab: LabCluster, strike: Striking, writer: DiscoveryWriter) -> None:
        assert strike.target is not None
        refresh_restarted_servers(lab)
        ctx = FaultContext(lab, self.config.tuning, writer, strike.target, TABLE)
        try:
            heal: Heal = inject(strike.fault, ctx)
        except Exception as exc:  # the fault does not apply now (its target is down, say)
            # its preparation may have acted meanwhile (inject undid it): the record says what
            strike.error = not_injected(exc, ctx)
            self.say(f"[{self.rel(time.time()):7.1f}s]   {strike.planned.kind} on {strike.target}: "
                     f"not injected ({strike.error})")
            return
        strike.injected = time.time()
        self.say(f"[{self.rel(strike.injected):7.1f}s]   {strike.planned.kind} on {strike.target} "
                 f"({strike.planned.trigger.value}), held {strike.planned.hold:.1f}s")
        self.stop.wait(strike.planned.hold)
        strike.healing = time.time()
        try:
            heal()
        except Exception as exc:  # a lab step that failed, not a broken invariant: say so
            strike.error = f"heal failed: {type(exc).__name__}: {exc}"[:200]
            self.say(f"[{self.rel(time.time()):7.1f}s]   {strike.planned.kind}: {strike.error}")
        ctx.undo_steps()  # whatever a heal that failed half-way left behind
        strike.healed = time.time()
        # The fault's own checks (a flood's 1040s...) assume it struck a settled primary alone:
        # under overlaps they are notes for the timeline, not invariants.
        strike.problems = tuple(ctx.problems)

    # ------------------------------------------------------------------ checks
    def _events(self) -> tuple[FaultEvent, ...]:
        return fault_events(list(self.strikes), self.config.tuning, self.ttl)

    def _quiet_check(self, lab: LabCluster, writer: DiscoveryWriter, reader: PooledReader, monitor: Monitor,
                     burst: int | None) -> Verdict:
        """Whole again? Then the history so far: lost writes, two writers, stale reads."""
        if burst is None:  # the end: give the cluster its quiet period after the last burst
            self.stop.wait(1.0)
        now = time.time()
        admitting = lab.primaries()
        views = [NodeView.from_status(a.name, lab.agent_status(a.name)) for a in lab.agents]
        quiet_since = max(self.burst_ends.values(), default=self.started)
        acked_in_quiet = sum(1 for a in list(writer.attempts)
                             if a.outcome is Outcome.ACKNOWLEDGED and a.start >= quiet_since)
        whole = wholeness(views, admitting, acked_in_quiet)
        self.checks.append((self.rel(now), whole))
        where = "end" if burst is None else f"after burst {burst}"
        self.say(f"[{self.rel(now):7.1f}s] quiet check {where}: {whole.describe()}")
        if not whole.whole:
            self._breach("whole again", now, f"{where}: {'; '.join(whole.problems)}")
        attempts = tuple(a for a in list(writer.attempts) if a.end <= now)
        reads = tuple(r for r in list(reader.reads) if r.end <= now)
        logs = read_agent_logs(lab)
        tenures = remember_tenures(self.tenures, lab.in_client(read_tenures, lab), tenures_of(logs))
        history = History(attempts, tenures, self._events(),
                          lab.in_client(read_final_state, lab, whole.primary, TABLE), reads,
                          promises_of(logs), tuple(a.name for a in lab.agents))
        verdict = check(history)
        self._judge(verdict, attempts, where)
        if verdict.final_primary is not None:
            self.lost_checked = (self.rel(now), len(verdict.lost))
        return verdict

    def _judge(self, verdict: Verdict, attempts: tuple[Attempt, ...], where: str) -> None:
        ends = {a.id: a.end for a in attempts}
        if verdict.final_primary is not None and verdict.lost:
            first = min(verdict.lost, key=lambda i: ends[i])
            self._breach("0 acknowledged writes lost", ends[first],
                         f"{where}: {len(verdict.lost)} lost on {verdict.final_primary}, e.g. ids "
                         f"{list(verdict.lost)[:10]}")
        for item in verdict.interleaved[:5]:
            self._breach("never two writers", ends[item.after], f"{where}: {item}")
        for stale in verdict.stale[:5]:
            self._breach("never two writers", ends[stale.id], f"{where}: {stale}")
        for write_id in verdict.admitted_while_fenced[:5]:
            self._breach("never two writers", ends[write_id],
                         f"{where}: write {write_id} acknowledged while the DCS could grant no lease")
        for unleased in verdict.unleased[:5]:
            self._breach("no write admitted without a lease or live failsafe promises", ends[unleased.id],
                         f"{where}: write {unleased.id} acknowledged through {unleased.node} during "
                         f"{unleased.fault}, one TTL after it, with no promise from "
                         f"{', '.join(unleased.unpromised)}")
        for read in verdict.stale_reads[:5]:
            self._breach("reads see every acknowledged write", read.start,
                         f"{where}: read through {read.node} missed {list(read.missing)[:10]}")

    def _breach(self, invariant: str, wall: float, detail: str) -> None:
        # Checks repeat over the growing history: report each finding once.
        if any(b.invariant == invariant and b.detail.split(": ", 1)[-1] == detail.split(": ", 1)[-1]
               for b in self.breaches):
            return
        breach = Breach(invariant, self.rel(wall), wall, detail)
        self.breaches.append(breach)
        self.say(f"INVARIANT BROKEN (seed {self.config.seed}, {breach.at:.1f}s into the run): "
                 f"{invariant}: {detail}")

    # ------------------------------------------------------------------ output
    def _records(self, writer: DiscoveryWriter, changes: list[RoleChange]) -> list[FaultRecord]:
        acked = [a for a in writer.attempts if a.outcome is Outcome.ACKNOWLEDGED]
        records = []
        for number, strike in enumerate(self.strikes):
            rto, known, did = None, False, tuple[str, ...]()
            if strike.injected is not None and strike.healed is not None:
                gap = outage(acked, FaultEvent(strike.planned.kind, strike.injected, strike.healed))
                rto, known = gap.seconds, True
                # what the cluster did: until the burst's next fault, or its quiet check
                later = [s.injected for s in self.strikes[number + 1:]
                         if s.burst == strike.burst and s.injected is not None]
                until = later[0] if later else \
                    self.burst_ends.get(strike.burst, time.time()) + self.config.quiet
                did = cluster_did(changes, self.rel(strike.injected), self.rel(until))
            records.append(FaultRecord(
                strike.burst, strike.planned.kind, strike.planned.trigger.value, strike.target,
                strike.planned.hold, None if strike.injected is None else self.rel(strike.injected),
                None if strike.healed is None else self.rel(strike.healed), strike.error, rto, known,
                did + tuple(f"fault's own check: {p}" for p in strike.problems)))
        return records

    def _keep(self, lab: LabCluster, writer: DiscoveryWriter, reader: PooledReader,
              records: list[FaultRecord]) -> Path:
        """Every agent's action log, the servers' error logs and the whole history."""
        target = self.config.root.parent / f"soak-kept-seed{self.config.seed}-{int(self.started)}"
        for log in [*lab.directory.glob("agents/*.log"), *lab.directory.glob("db*/error.log")]:
            (target / log.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(log, target / log.parent.name / log.name)
        target.mkdir(parents=True, exist_ok=True)
        with open(target / "writes.jsonl", "w") as out:
            for a in writer.attempts:
                out.write(json.dumps({"id": a.id, "start": a.start, "end": a.end, "node": a.node,
                                      "outcome": a.outcome.value}) + "\n")
        with open(target / "reads.jsonl", "w") as out:
            for r in reader.reads:
                out.write(json.dumps({"start": r.start, "end": r.end, "node": r.node, "low": r.low,
                                      "ids": sorted(r.ids)}) + "\n")
        (target / "faults.json").write_text(json.dumps([asdict(r) for r in records], indent=1))
        (target / "breaches.json").write_text(json.dumps([b.to_json() for b in self.breaches], indent=1))
        (target / "replay.txt").write_text(self.config.replay_command() + "\n")
        return target


def refresh_restarted_servers(lab: LabCluster) -> None:
    """Take from the manifest the mysqld processes that an agent restarted itself ([rejoin]
    truncate runs ``dbfence lab start-mysql --recovery``), so that faults strike the live one."""
    try:
        recorded = {n.name: n for n in LabCluster.load(lab.directory).mysql}
    except (LabError, OSError, ValueError, KeyError):
        return
    refreshed = []
    for node in lab.mysql:
        other = recorded.get(node.name)
        restarted = other is not None and other.pid != node.pid and not node.process.alive() \
            and other.process.alive()
        refreshed.append(other if restarted and other is not None else node)
    lab.mysql = refreshed


def fault_events(strikes: list[Striking], tuning: AgentTuning, ttl: float) -> tuple[FaultEvent, ...]:
    """The history checker's view of the faults injected and healed so far. A fault's windows end
    when its heal begins (as the matrix's do): what the heal brought back may let the cluster go
    on before the heal returns (etcd back while the killed mysqld is still starting, say)."""
    events = []
    # The heals that may give a node its lease back: of the faults that took one, and of the
    # DCS's own (a row for one DCS kind only), e.g. the etcd member a leader kill took.
    heals = sorted(s.healing for s in strikes if s.healing is not None
                   and (s.fault.leaseless or len(s.fault.dcs) == 1))
    for strike in strikes:
        if strike.injected is None or strike.healed is None or strike.healing is None:
            continue
        quiet = strike.fault.quiet_after(tuning)
        span: tuple[float | None, float | None] = (None, None)
        if strike.fault.leaseless:
            span = leaseless_span(strike.injected, strike.healing, ttl, heals)
        events.append(FaultEvent(strike.planned.kind, strike.injected, strike.healing,
                                 None if quiet is None else strike.injected + quiet,
                                 *span, strike.target or ""))
    return tuple(events)


def leaseless_span(injected: float, healing: float, ttl: float,
                   heals: Iterable[float]) -> tuple[float, float]:
    """When a node that a fault cut off from the DCS (or whose agent it stopped) at ``injected``
    can hold no lease: its last renewal was sent before the injection, so from one TTL on, until
    the first heal after the injection (its own, at ``healing``, or another fault's that may have
    brought back what this one took: the etcd member a leader kill took, say)."""
    return injected + ttl, min((h for h in heals if injected < h), default=healing)


def cluster_did(changes: list[RoleChange], start: float, end: float) -> tuple[str, ...]:
    """The role changes in [start, end), as ``db2 replica->candidate`` texts, time-ordered."""
    return tuple(f"{c.at:.1f}s {c.node} {c.old}->{c.new}" + (f" ({c.why})" if c.why else "")
                 for c in changes if start <= c.at < end)
