"""The fault-matrix checker on hand-made histories: each kind of violation, and its absence."""

from __future__ import annotations

from dbfence.lab.history import (
    Attempt,
    FaultEvent,
    FinalState,
    History,
    Interleaving,
    Outcome,
    Promise,
    StaleWrite,
    Tenure,
    UnleasedWrite,
    check,
)

ACK, REFUSED, UNKNOWN = Outcome.ACKNOWLEDGED, Outcome.REFUSED, Outcome.UNKNOWN
# db1 holds token 10 from t=0, db2 takes token 20 at t=10 (a failover).
FAILOVER = (Tenure(10, "db1", 0.0), Tenure(20, "db2", 10.0))


def ack(row: int, start: float, node: str, took: float = 0.1) -> Attempt:
    return Attempt(row, start, start + took, node, ACK)


def history(attempts: list[Attempt], rows: set[int] | None = None, tenures: tuple[Tenure, ...] = FAILOVER,
            faults: tuple[FaultEvent, ...] = (), errant: dict[str, tuple[str, ...]] | None = None) -> History:
    landed = {a.id for a in attempts if a.outcome is ACK} if rows is None else rows
    return History(tuple(attempts), tenures, faults, FinalState("db2", frozenset(landed), errant or {}))


def clean_failover() -> list[Attempt]:
    return [ack(1, 1.0, "db1"), ack(2, 2.0, "db1"),
            Attempt(3, 3.0, 5.0, "db1", UNKNOWN),  # the primary died under this one
            Attempt(4, 5.1, 5.2, "", REFUSED),
            ack(5, 11.0, "db2"), ack(6, 12.0, "db2")]


def test_a_clean_failover_is_safe_and_its_outage_is_measured() -> None:
    fault = FaultEvent("mysqld-kill", at=3.0, healed_at=10.5)  # mysqld restarted once db2 admits
    verdict = check(history(clean_failover(), faults=(fault,)))
    assert verdict.safe
    assert (verdict.acknowledged, verdict.refused, verdict.lost, verdict.overlapping) == (4, 1, (), 0)
    assert verdict.unknown_missing == (3,) and verdict.unknown_landed == ()
    [outage] = verdict.outages
    assert (outage.fault, outage.start, outage.end) == ("mysqld-kill", 3.0, 11.1)
    assert outage.seconds is not None and abs(outage.seconds - 8.1) < 1e-9


def test_the_outage_is_the_longest_silence_even_when_the_old_primary_writes_on_for_a_while() -> None:
    # a paused agent: its gate admits until the lease deadline (t=5), then nothing until db2
    attempts = [ack(1, 1.0, "db1"), ack(2, 3.5, "db1"), ack(3, 4.5, "db1"), ack(4, 11.0, "db2"),
                ack(5, 12.0, "db2")]
    fault = FaultEvent("agent-stop", at=3.0, healed_at=11.5)
    [outage] = check(history(attempts, faults=(fault,))).outages
    assert (outage.start, outage.end) == (4.6, 11.1)


def test_an_acknowledged_write_missing_on_the_final_primary_is_lost() -> None:
    attempts = clean_failover()
    verdict = check(history(attempts, rows={1, 5, 6}))
    assert verdict.lost == (2,)
    assert not verdict.safe


def test_an_unknown_outcome_that_landed_is_told_apart() -> None:
    verdict = check(history(clean_failover(), rows={1, 2, 3, 5, 6}))
    assert verdict.unknown_landed == (3,) and verdict.unknown_missing == ()
    assert verdict.safe  # landing is allowed for an unknown outcome


def test_the_old_primary_acknowledging_after_the_new_token_is_a_stale_write() -> None:
    attempts = [*clean_failover(), ack(7, 12.5, "db1")]  # db1 admits after db2 took the lock
    verdict = check(history(attempts))
    assert verdict.stale == (StaleWrite(7, "db1", 20, "db2"),)
    assert not verdict.safe


def test_a_write_in_flight_across_the_takeover_is_not_stale() -> None:
    # started before db2's token, acknowledged after it: the commit may precede the takeover
    attempts = [ack(1, 1.0, "db1"), Attempt(2, 9.9, 10.3, "db1", ACK), ack(3, 11.0, "db2")]
    assert check(history(attempts)).stale == ()


def test_two_nodes_taking_turns_without_a_new_token_are_interleaved_writers() -> None:
    # both admit during one tenure each: db2 writes inside db1's stretch
    attempts = [ack(1, 1.0, "db1"), ack(2, 2.0, "db2"), ack(3, 3.0, "db1"), ack(4, 11.0, "db2")]
    verdict = check(history(attempts, tenures=(Tenure(10, "db1", 0.0), Tenure(20, "db2", 0.5))))
    assert Interleaving("db1", "db2", 1, 2, 3) in verdict.interleaved
    assert not verdict.safe


def test_overlapping_intervals_alone_prove_nothing() -> None:
    # db1's slow acknowledgement overlaps db2's first write: each commit may lie anywhere inside
    attempts = [ack(1, 1.0, "db1"), Attempt(2, 9.0, 11.5, "db1", ACK), ack(3, 11.0, "db2"),
                ack(4, 12.0, "db2")]
    verdict = check(history(attempts, tenures=(Tenure(10, "db1", 0.0), Tenure(20, "db2", 10.0))))
    assert verdict.interleaved == () and verdict.stale == ()


def test_a_switchover_back_with_a_new_token_is_not_interleaving() -> None:
    tenures = (Tenure(10, "db1", 0.0), Tenure(20, "db2", 10.0), Tenure(30, "db1", 20.0))
    attempts = [ack(1, 1.0, "db1"), ack(2, 11.0, "db2"), ack(3, 21.0, "db1")]
    verdict = check(history(attempts, tenures=tenures))
    assert verdict.interleaved == () and verdict.stale == ()
    # ...but without that third tenure the same history is two writers
    verdict = check(history(attempts, tenures=tenures[:2]))
    assert verdict.interleaved == (Interleaving("db1", "db2", 1, 2, 3),)
    assert verdict.stale == (StaleWrite(3, "db1", 20, "db2"),)


def test_a_write_acknowledged_during_a_quiet_window_is_flagged() -> None:
    quorum = FaultEvent("etcd-quorum-loss", at=3.0, healed_at=8.0, quiet_from=6.0)
    attempts = [ack(1, 1.0, "db1"), ack(2, 4.0, "db1"), ack(3, 7.0, "db1"), ack(4, 9.0, "db1")]
    verdict = check(history(attempts, tenures=(Tenure(10, "db1", 0.0),), faults=(quorum,)))
    assert verdict.admitted_while_fenced == (3,)
    assert (verdict.outages[0].start, verdict.outages[0].end) == (4.1, 7.1)


def test_a_fault_never_recovered_from_has_no_recovery_time() -> None:
    fault = FaultEvent("etcd-quorum-loss", at=3.0, healed_at=8.0)
    verdict = check(history([ack(1, 1.0, "db1")], faults=(fault,)))
    assert verdict.outages[0].end is None and verdict.outages[0].seconds is None


def test_errant_transactions_are_reported_per_node() -> None:
    verdict = check(history(clean_failover(), errant={"db1": ("0-1-5",), "db3": ()}))
    assert verdict.errant == {"db1": ("0-1-5",)}


# db1 is cut off from the DCS at t=3 (TTL 3: no lease of its can remain from t=6) until t=12.
CUT = FaultEvent("dcs-cut+failsafe", at=3.0, healed_at=12.5, leaseless_from=6.0, leaseless_until=12.0,
                 node="db1")
MEMBERS = ("db1", "db2", "db3")


def leaseless_history(attempts: list[Attempt], promises: tuple[Promise, ...]) -> History:
    return History(tuple(attempts), (Tenure(10, "db1", 0.0),), (CUT,),
                   FinalState("db1", frozenset(a.id for a in attempts)), promises=promises, members=MEMBERS)


def test_a_write_admitted_past_the_lease_with_no_promise_is_flagged() -> None:
    # 2 began before the lease could have run out, 5 after the DCS came back: both are fine
    attempts = [ack(1, 1.0, "db1"), ack(2, 5.5, "db1"), ack(3, 7.0, "db1"), ack(4, 11.0, "db1"),
                ack(5, 12.2, "db1")]
    verdict = check(leaseless_history(attempts, ()))
    assert verdict.unleased == (UnleasedWrite(3, "db1", "dcs-cut+failsafe", ("db2", "db3")),
                                UnleasedWrite(4, "db1", "dcs-cut+failsafe", ("db2", "db3")))
    assert not verdict.safe
    assert verdict.admitted_while_fenced == () and verdict.overlapping == 0  # the other checks miss it


def test_writes_kept_by_every_members_promise_are_admitted() -> None:
    # each peer promised db1 3 s at a time from t=4.5, the last promises ending at t=10.6
    promises = tuple(Promise(giver, "db1", 10, at, 3.0)
                     for giver in ("db2", "db3") for at in (4.5, 5.6, 6.6, 7.6))
    attempts = [ack(1, 6.5, "db1"), ack(2, 8.0, "db1"), ack(3, 10.5, "db1")]
    verdict = check(leaseless_history(attempts, promises))
    assert verdict.unleased == () and verdict.safe
    # past the last promise, the same gate must have refused
    verdict = check(leaseless_history([*attempts, ack(4, 10.7, "db1")], promises))
    assert [(u.id, u.unpromised) for u in verdict.unleased] == [(4, ("db2", "db3"))]


def test_a_promise_from_one_member_only_does_not_keep_a_write() -> None:
    promises = (Promise("db2", "db1", 10, 5.0, 3.0), Promise("db3", "db2", 10, 5.0, 3.0))
    verdict = check(leaseless_history([ack(1, 6.5, "db1")], promises))
    assert verdict.unleased == (UnleasedWrite(1, "db1", "dcs-cut+failsafe", ("db3",)),)


def test_another_nodes_writes_are_not_held_to_the_cut_nodes_lease() -> None:
    # db2 took the lock once db1's lease ran out there: its writes have a lease of their own
    attempts = [ack(1, 1.0, "db1"), ack(2, 8.0, "db2"), ack(3, 9.0, "db2")]
    history = leaseless_history(attempts, ())
    tenures = (Tenure(10, "db1", 0.0), Tenure(11, "db2", 7.5))
    verdict = check(History(history.attempts, tenures, history.faults, history.final, members=MEMBERS))
    assert verdict.unleased == () and verdict.safe
