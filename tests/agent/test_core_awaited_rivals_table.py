"""Table of the winner's wait for its rivals (``State.awaited_rivals``, decide_promotion).

A winner writes nothing until every rival whose record was fresh when it won has published a
record that saw its lease, even once that record is stale or gone: an agent cut off from the
DCS says nothing of what its mysqld received since its last record (the model checker's
check_new_primaries, tests/agent/test_core_model_check_new_primaries.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from dbfence.agent.actions import Action, ActionReason, AdmitGate, Promote, RegisterDiscovery, ReleaseLock
from dbfence.agent.core_config import CoreConfig
from dbfence.agent.decide import RefusalReason, decide
from dbfence.agent.observation import DiscoveryTag, LockView, Observation
from dbfence.agent.state import Role, State
from tests.agent.core_builders import CONFIG, DEADLINE, HELD, NOW, TOKEN, core_actions, db, member, observe

R = RefusalReason
A = ActionReason
N2 = frozenset({"n2"})
PROMOTE = (Promote(True, A.PROMOTION),)
N2_UNSEEN = member("n2", position="0-1-90", seen_token=None)  # fresh, has not seen our lease
N3_STALE = member("n3", position="0-1-80", seen_token=None, last_seen=NOW - 30)


@dataclass(frozen=True)
class Case:
    id: str
    state: State
    obs: Observation
    role: Role
    awaited: frozenset[str]
    actions: tuple[Action, ...] = ()
    refusals: tuple[RefusalReason, ...] = ()
    config: CoreConfig = CONFIG


def at(role: Role, awaited: frozenset[str] = frozenset()) -> State:
    return State(role=role, since=NOW - 10, awaited_rivals=awaited)


CASES = [
    Case("won: the fresh rivals are remembered, a stale one is not", at(Role.CANDIDATE),
         observe(Role.CANDIDATE, lease=HELD, peers=(N2_UNSEEN, N3_STALE)), Role.PROMOTING, N2,
         (), (R.AWAITING_PEERS,)),
    Case("won without lossless: nobody is remembered", at(Role.CANDIDATE),
         observe(Role.CANDIDATE, lease=HELD, peers=(N2_UNSEEN, N3_STALE)), Role.PROMOTING, frozenset(),
         (), (R.AWAITING_PEERS,), replace(CONFIG, lossless=False)),
    Case("a remembered rival whose record is gone is waited for", at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(N3_STALE,)), Role.PROMOTING, N2, (),
         (R.AWAITING_PEERS,)),
    Case("a remembered rival whose record went stale is waited for", at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(replace(N2_UNSEEN, last_seen=NOW - 30),)),
         Role.PROMOTING, N2, (), (R.AWAITING_PEERS,)),
    Case("its fresh record saw our lease: forgotten, the promotion goes on", at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(member("n2", position="0-1-90"),)),
         Role.PROMOTING, frozenset(), PROMOTE),
    Case("its fresh record saw our lease and holds more: steps down, forgets", at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(member("n2", position="0-1-101"),)),
         Role.REPLICA, frozenset(), (ReleaseLock(TOKEN, A.OVERTAKEN),), (R.PEER_MORE_ADVANCED,)),
    Case("its record saw our lease, its mysqld down: position unknown, still waited for",
         at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(member("n2", healthy=False, position=None),)),
         Role.PROMOTING, N2, (), (R.AWAITING_PEERS,)),
    Case("back no longer a rival (fenced, holding nothing we lack): not waited for",
         at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(member("n2", Role.FENCED, position="0-1-90",
                                                           seen_token=None),)),
         Role.PROMOTING, N2, PROMOTE),
    Case("the DCS unreachable: nothing written, the wait kept", at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, lock=LockView(reachable=False), peers=()),
         Role.PROMOTING, N2, (), (R.DCS_UNREACHABLE,)),
    Case("past the point of no return nobody is awaited", at(Role.PROMOTING, N2),
         observe(Role.PROMOTING, lease=HELD, peers=(),
                 database=db(source=None, read_only=False, token=TOKEN)),
         Role.PRIMARY, frozenset(), (AdmitGate(TOKEN, DEADLINE, A.PRIMARY_READY),
                                     RegisterDiscovery(DiscoveryTag.PRIMARY, A.PRIMARY_READY))),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_awaited_rivals_table(case: Case) -> None:
    decision = decide(case.obs, case.state, case.config)
    assert decision.state.role is case.role
    assert decision.state.awaited_rivals == case.awaited
    assert core_actions(decision) == case.actions
    assert tuple(refusal.reason for refusal in decision.refusals) == case.refusals


def test_the_refusal_names_the_rival_and_why() -> None:
    decision = decide(observe(Role.PROMOTING, lease=HELD, peers=(N3_STALE,)), at(Role.PROMOTING, N2), CONFIG)
    [refusal] = decision.refusals
    assert refusal.detail.startswith("n2 (no fresh record since we won: it may hold acknowledged writes")
    down = member("n2", healthy=False, position=None)
    decision = decide(observe(Role.PROMOTING, lease=HELD, peers=(down,)), at(Role.PROMOTING, N2), CONFIG)
    [refusal] = decision.refusals
    assert refusal.detail.startswith("n2 (its position unknown since we won, its mysqld down")
