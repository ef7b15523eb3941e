"""The soak's checks on hand-made histories and cluster views: each fails when its invariant
is broken and passes when it holds."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime

import pytest

from dbfence.lab.agent_logs import promises_in, tenures_in
from dbfence.lab.agents import AgentTuning
from dbfence.lab.faults import all_faults
from dbfence.lab.final_state import remember_tenures
from dbfence.lab.history import (
    Attempt,
    FinalState,
    History,
    Outcome,
    Promise,
    Read,
    Tenure,
    check,
    find_stale_reads,
    find_stale_writes,
)
from dbfence.lab.nemesis import PlannedFault, Trigger
from dbfence.lab.soak import Striking, fault_events, leaseless_span
from dbfence.lab.soak_checks import NodeView, wholeness
from dbfence.lab.soak_clients import promoted, strike_target
from dbfence.lab.soak_report import FaultRecord, percentile, rto_by_kind, timeline

ACK = Outcome.ACKNOWLEDGED


def ack(row: int, start: float, node: str = "db1", took: float = 0.1) -> Attempt:
    return Attempt(row, start, start + took, node, ACK)


WRITES = [ack(1, 1.0), ack(2, 2.0), ack(3, 3.0), Attempt(4, 4.0, 4.5, "db1", Outcome.UNKNOWN)]


def test_a_read_that_sees_every_earlier_acknowledged_write_is_not_stale() -> None:
    reads = [Read(3.5, 3.6, "db1", 1, frozenset({1, 2, 3})),
             # write 3 was still in flight when this read began: it need not see it
             Read(3.05, 3.2, "db1", 2, frozenset({2}))]
    assert find_stale_reads(WRITES, reads) == ()


def test_a_read_that_misses_a_write_acknowledged_before_it_began_is_stale() -> None:
    [stale] = find_stale_reads(WRITES, [Read(3.5, 3.6, "db2", 2, frozenset({3}))])
    assert (stale.node, stale.missing, stale.start) == ("db2", (2,), 3.5)


def test_a_read_is_held_only_to_the_ids_from_its_low_mark_up() -> None:
    assert find_stale_reads(WRITES, [Read(3.5, 3.6, "db1", 3, frozenset({3}))]) == ()


def test_a_stale_read_makes_the_verdict_unsafe() -> None:
    history = History(tuple(WRITES), (Tenure(1, "db1", 0.0),), (), FinalState("db1", frozenset({1, 2, 3})),
                      (Read(3.5, 3.6, "db1", 1, frozenset({1, 3})),))
    verdict = check(history)
    assert not verdict.safe and verdict.lost == () and verdict.overlapping == 0
    assert verdict.stale_reads[0].missing == (2,)
    assert check(History(tuple(WRITES), (Tenure(1, "db1", 0.0),), (),
                         FinalState("db1", frozenset({1, 2, 3})))).safe


def replica(name: str, source: str = "db1") -> NodeView:
    return NodeView(name, True, "replica", None, source, True)


PRIMARY = NodeView("db1", True, "primary", None, None, True)


def test_one_primary_with_every_other_node_following_it_is_whole() -> None:
    judged = wholeness([PRIMARY, replica("db2"), replica("db3")], ["db1"])
    assert judged.whole and judged.primary == "db1"


def test_a_primary_that_acknowledged_no_write_in_the_quiet_period_is_not_whole() -> None:
    nodes = [PRIMARY, replica("db2"), replica("db3")]
    assert wholeness(nodes, ["db1"], writes_acknowledged=120).whole
    stalled = wholeness(nodes, ["db1"], writes_acknowledged=0)
    assert stalled.problems == ("db1 admits but acknowledged no write during the quiet period",)


def test_a_node_fenced_with_its_reason_named_still_counts_as_whole() -> None:
    fenced = NodeView("db3", True, "fenced", "errant_gtids", None, True, ("0-1-5",))
    judged = wholeness([PRIMARY, replica("db2"), fenced], ["db1"])
    assert judged.whole and judged.fenced == ("db3",)
    assert "fenced (errant_gtids 0-1-5)" in judged.describe()


@pytest.mark.parametrize(("nodes", "admitting", "problem"), [
    ([PRIMARY, replica("db2")], [], "no node admits"),
    ([PRIMARY, NodeView("db2", True, "primary")], ["db1", "db2"], "2 nodes admit"),
    ([PRIMARY, replica("db2", source="db3")], ["db1"], "replicates from db3, not db1"),
    ([PRIMARY, NodeView("db2", False)], ["db1"], "does not answer"),
    ([PRIMARY, NodeView("db2", True, "fenced", None)], ["db1"], "fenced with no reason"),
    ([PRIMARY, NodeView("db2", True, "promoting")], ["db1"], "still promoting"),
    ([PRIMARY, NodeView("db2", True, "replica", None, "db1", False)], ["db1"], "unhealthy replica"),
    ([NodeView("db1", True, "fencing"), replica("db2")], ["db1"], "admits but says it is fencing"),
])
def test_anything_else_is_not_whole(nodes: list[NodeView], admitting: list[str], problem: str) -> None:
    judged = wholeness(nodes, admitting)
    assert not judged.whole
    assert any(problem in p for p in judged.problems), judged.problems


def test_a_node_view_is_read_from_an_agent_status_document() -> None:
    status = {"role": "fenced", "fenced_reason": "errant_gtids",
              "database": {"replication_source": None, "healthy": True, "errant": ["0-1-7"]}}
    assert NodeView.from_status("db2", status) == NodeView("db2", True, "fenced", "errant_gtids", None, True,
                                                           ("0-1-7",))
    assert NodeView.from_status("db3", {}) == NodeView("db3", False)


def record(kind: str, rto: float | None, injected: float | None = 1.0) -> FaultRecord:
    return FaultRecord(1, kind, "at-once", "db1", 2.0, injected, None if injected is None else injected + 2,
                       None if injected is not None else "ProcessLookupError", rto, injected is not None)


def test_the_rto_distribution_per_kind_counts_faults_never_recovered_and_skipped() -> None:
    records = [record("mysqld-kill", float(s)) for s in range(1, 101)]
    records += [record("mysqld-kill", None), record("mysqld-kill", None, injected=None)]
    [stats] = rto_by_kind(records)
    assert (stats.injected, stats.not_injected, stats.recovered, stats.never) == (101, 1, 100, 1)
    assert (stats.p50, stats.p95, stats.p99, stats.max) == (50.0, 95.0, 99.0, 100.0)
    text = timeline(records)
    assert "never" in text and "not injected: ProcessLookupError" in text


def test_overlaps_and_the_faults_they_interrupted_get_distributions_of_their_own() -> None:
    alone = [record("mysqld-kill", 0.8), record("mysqld-kill", 1.1)]  # burst 1, struck at 1.0
    # seed 402 burst 13: a kill at 1085.5 whose recovery the next fault cut 1.06 s in: 33.1 s
    interrupted = FaultRecord(13, "mysqld-kill", "at-once", "db3", 6.8, 1085.47, 1092.3, None, 33.14, True)
    overlap = FaultRecord(13, "lagging-replica+mysqld-kill", "recovering", "db1", 21.7, 1086.53, 1108.2,
                          None, 33.11, True)
    stats = {k.kind: k for k in rto_by_kind([*alone, interrupted, overlap])}
    assert set(stats) == {"mysqld-kill", "mysqld-kill (+overlap)", "lagging-replica+mysqld-kill (overlap)"}
    assert (stats["mysqld-kill"].injected, stats["mysqld-kill"].max) == (2, 1.1)
    assert stats["mysqld-kill (+overlap)"].max == 33.14
    assert stats["lagging-replica+mysqld-kill (overlap)"].max == 33.11
    # a later fault of the burst that struck after writes came back interrupted nothing
    late = FaultRecord(13, "switchover", "recovering", "db1", 1.0, 1085.47 + 40, None, None, 0.5, True)
    assert {k.kind for k in rto_by_kind([interrupted, late])} == {"mysqld-kill", "switchover (overlap)"}
    # seed 411 burst 8: a kill held 39.7 s, back in 0.6 s, and a second kill 28 s later within that
    # hold: the first one's figure (3.61 s, the longest gap up to its heal) is the second one's
    held = FaultRecord(8, "mysqld-kill", "at-once", "db1", 39.7, 449.48, 489.22, None, 3.61, True)
    second = FaultRecord(8, "mysqld-kill", "promotion", "db2", 9.8, 477.54, 487.38, None, 3.61, True)
    kinds = {k.kind for k in rto_by_kind([held, second])}
    assert kinds == {"mysqld-kill (+overlap)", "mysqld-kill (overlap)"}
    # one that never recovered was interrupted by any later fault of its burst
    never = replace(interrupted, rto=None)
    assert "mysqld-kill (+overlap)" in {k.kind for k in rto_by_kind([never, late])}


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    with pytest.raises(ValueError):
        percentile([], 0.5)


def test_the_promises_an_agent_gave_are_read_from_its_log() -> None:
    text = "\n".join([
        '2026-12-07 04:29:35,066 INFO dbfence.agent {"event": "started", "node": "db2"}',
        '2026-12-07 04:31:02,250 INFO dbfence.agent.peer_promises '
        '{"event": "promise_given", "to": "db1", "token": 207, "seconds": 3.0}',
        '2026-12-07 04:31:02,2',  # cut short by a kill -9
        '2026-12-07 04:31:03,251 INFO dbfence.agent.peer_promises {"event": "promise_given", "to": "db1"',
        '2026-12-07 04:31:03,400 WARNING dbfence.agent.peer_promises promise to db1 refused: disk full',
    ])
    [promise] = promises_in("db2", text)
    at = datetime(2026, 12, 7, 4, 31, 2, 250000).timestamp()  # the agents log local wall-clock time
    assert promise == Promise("db2", "db1", 207, at, 3.0)
    assert abs(promise.until - (at + 3.0)) < 1e-6


def status(role: str, token: int | None = None) -> dict[str, object]:
    return {"role": role, "lease": {"held": token is not None, "token": token}}


def test_the_nemesis_strikes_the_primary_with_the_newest_token_else_a_promoting_node() -> None:
    # db1 thawed after a host freeze still serves its last report ("primary", token 7)
    latest = {"db1": status("primary", 7), "db2": status("primary", 9), "db3": status("replica")}
    assert strike_target(latest, "db3") == "db2"
    assert strike_target({"db1": {}, "db2": status("promoting", 9), "db3": status("replica")}, "db1") == "db2"
    assert strike_target({"db1": {}, "db2": status("fenced")}, "db1") == "db1"


def test_a_promotion_is_a_node_seen_in_another_role_then_taking_over() -> None:
    assert promoted(status("candidate"), status("promoting", 9))
    assert promoted(status("replica"), status("primary", 9))
    assert not promoted({}, status("primary", 7))  # a frozen agent answering again with its old report
    assert not promoted(status("promoting", 9), status("primary", 9))
    assert not promoted(status("replica"), status("fenced"))


def test_a_node_cut_off_holds_no_lease_from_one_ttl_on_until_the_first_heal_after_the_cut() -> None:
    assert leaseless_span(10.0, 20.0, 3.0, [20.0]) == (13.0, 20.0)
    # an etcd member a leader kill took came back at 15: quorum may have returned then
    assert leaseless_span(10.0, 20.0, 3.0, [5.0, 15.0, 20.0]) == (13.0, 15.0)
    # a heal before the cut changes nothing
    assert leaseless_span(10.0, 20.0, 3.0, [5.0]) == (13.0, 20.0)


def struck(kind: str, injected: float, healing: float, healed: float, target: str = "db1") -> Striking:
    fault = next(f for f in all_faults() if f.name == kind)
    return Striking(PlannedFault(kind, Trigger.AT_ONCE, 0.0, healing - injected), fault, 1, target,
                    injected, healing, healed)


def test_a_faults_windows_end_when_its_heal_begins() -> None:
    # etcd quorum lost (failsafe on), then the primary's mysqld killed; the heal brings etcd back
    # at t=20, and db2 takes over while db1's mysqld is still starting, until t=26 (seed 203
    # flagged db2's writes as admitted without a DCS, its windows ending at t=26)
    [event] = fault_events([struck("etcd-quorum-loss+mysqld-kill+failsafe", 10.0, 20.0, 26.0)],
                           AgentTuning(failsafe=True), 3.0)
    assert (event.quiet_from, event.healed_at) == (10.0, 20.0)
    assert (event.leaseless_from, event.leaseless_until, event.node) == (13.0, 20.0, "db1")
    history = History((ack(1, 21.0, "db2"),), (Tenure(5, "db1", 0.0), Tenure(6, "db2", 20.5)), (event,),
                      FinalState("db2", frozenset({1})))
    assert check(history).safe
    # without failsafe the plain quorum loss keeps its quiet window from one TTL on
    [plain] = fault_events([struck("etcd-quorum-loss", 10.0, 20.0, 21.0)], AgentTuning(), 3.0)
    assert (plain.quiet_from, plain.healed_at, plain.leaseless_from) == (13.0, 20.0, 13.0)
    [kept] = fault_events([struck("etcd-quorum-loss", 10.0, 20.0, 21.0)], AgentTuning(failsafe=True), 3.0)
    assert kept.quiet_from is None  # peers' promises may keep the writes: the lease check judges them


def test_a_tenure_read_at_an_earlier_check_still_accounts_for_its_writes_when_its_holders_are_down() -> None:
    """Seed 302: db1's token 1740 row was on db1 and db3 only; both mysqlds were down (fenced by
    crash) at the next check, whose read saw only db2's older token, and every write of db1's
    term looked like a second writer's."""
    writes = [ack(1, 1.0, "db2"), ack(2, 5.0, "db1"), ack(3, 6.0, "db1")]
    known: dict[int, Tenure] = {}
    first = remember_tenures(known, [Tenure(1712, "db2", 0.5), Tenure(1740, "db1", 4.0)])
    later = remember_tenures(known, [Tenure(1712, "db2", 0.5)])  # db1's and db3's mysqld down
    assert later == first == (Tenure(1712, "db2", 0.5), Tenure(1740, "db1", 4.0))
    assert find_stale_writes(writes, later) == ()
    assert len(find_stale_writes(writes, [Tenure(1712, "db2", 0.5)])) == 2  # what one read alone said


def agent_line(stamp: str, **event: object) -> str:
    return f"2026-12-07 {stamp} INFO dbfence.agent " + json.dumps({"event": "action", "node": "db2", **event})


def at(stamp: str) -> float:
    return datetime.strptime(f"2026-12-07 {stamp}", "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_a_tenure_is_taken_from_the_log_only_when_its_gate_admitted_under_the_token() -> None:
    log = "\n".join([
        agent_line("14:55:11,074", action="WriteFencingToken", ok=True, token=1674, ms=20.0),
        agent_line("14:55:11,196", action="AdmitGate", ok=True, token=1674, ms=0.0),
        agent_line("14:55:20,000", action="WriteFencingToken", ok=True, token=1696, ms=0.0),  # in doubt
        agent_line("14:55:21,000", action="AdmitGate", ok=False, token=1696, ms=0.0),
        "2026-12-07 14:55:22,0",  # cut short by a kill -9
    ])
    [tenure] = tenures_in("db2", log)
    assert (tenure.token, tenure.node) == (1674, "db2")
    assert tenure.start == pytest.approx(at("14:55:11,054"))  # when the write began


def test_a_tenure_no_check_could_read_a_row_of_comes_from_the_log_until_a_row_is_read() -> None:
    """Seed 403: db2 took the lock with token 1674 and wrote; every mysqld holding that row was
    down at the next checks, so its writes looked like a second writer's under db1's 1508."""
    writes = [ack(1, 1.0, "db1"), ack(2, 6.0, "db2"), ack(3, 7.0, "db2")]
    known: dict[int, Tenure] = {}
    from_rows = remember_tenures(known, [Tenure(1508, "db1", 0.5)])
    assert len(find_stale_writes(writes, from_rows)) == 2
    logged = [Tenure(1508, "db1", 0.4), Tenure(1674, "db2", 5.5)]
    filled = remember_tenures(known, [], logged)
    assert filled == (Tenure(1508, "db1", 0.5), Tenure(1674, "db2", 5.5))  # a row wins over the log
    assert find_stale_writes(writes, filled) == ()
    assert remember_tenures(known, [Tenure(1674, "db2", 5.6)], logged)[-1] == Tenure(1674, "db2", 5.6)
