"""GtidPosition: parsing MariaDB's format, comparison, ranking, divergence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbfence.agent.gtid import BinlogState, Gtid, GtidParseError, GtidPosition, candidate_sort_key


def p(text: str) -> GtidPosition:
    return GtidPosition.parse(text)


def test_parse_round_trips_and_sorts_domains() -> None:
    position = p("1-2-5,0-1-100")
    assert str(position) == "0-1-100,1-2-5"
    assert position.as_mapping() == {0: (1, 100), 1: (2, 5)}
    assert GtidPosition.from_mapping({1: (2, 5), 0: (1, 100)}) == position
    assert p("") == GtidPosition() and p("  ") == GtidPosition()
    assert p("0-1-100,\n1-2-5") == position  # MariaDB wraps long lists


@pytest.mark.parametrize("text", ["0-1", "0-1-x", "a-b-c", "0-1-2-3", "0-1-2,", ",0-1-2", "-1-2-3",
                                  "0-1-5,0-2-6"])
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(GtidParseError):
        p(text)


def test_parse_rejects_non_strings_and_bad_parts() -> None:
    with pytest.raises(GtidParseError):
        GtidPosition.parse(5)  # type: ignore[arg-type]
    with pytest.raises(GtidParseError):
        Gtid(0, True, 1)
    with pytest.raises(GtidParseError):
        Gtid(0, 1, -1)
    with pytest.raises(GtidParseError, match="sorted"):
        GtidPosition((Gtid(1, 1, 1), Gtid(0, 1, 1)))


def test_covers_and_strictly_ahead() -> None:
    assert p("0-1-100,1-2-5").covers(p("0-1-99,1-2-5"))
    assert p("0-1-100").covers(p(""))
    assert not p("0-1-100").covers(p("0-1-100,1-2-1"))
    assert p("0-2-100").covers(p("0-1-100"))  # same seq in a domain: as advanced
    assert p("0-1-101").strictly_ahead_of(p("0-1-100"))
    assert not p("0-1-100").strictly_ahead_of(p("0-2-100"))
    assert p("0-1-5").seq_no(3) == 0 and p("0-1-5").get(3) is None


def test_rank_key_respects_domination_and_is_total() -> None:
    assert p("0-1-100,1-1-6").rank_key() > p("0-1-100,1-1-5").rank_key()
    # incomparable positions with equal sums are still ordered, deterministically
    a, b = p("0-1-10,1-1-5"), p("0-1-5,1-1-10")
    assert a.rank_key() != b.rank_key()


def test_candidate_key_ties_by_priority_then_smaller_name() -> None:
    same = p("0-1-100")
    assert candidate_sort_key(same, same, 200, "z") > candidate_sort_key(same, same, 100, "a")
    assert candidate_sort_key(same, same, 100, "a") > candidate_sort_key(same, same, 100, "b")
    assert candidate_sort_key(same, same, 100, "n1") > candidate_sort_key(same, same, 100, "n10")
    assert candidate_sort_key(p("0-1-101"), same, 0, "z") > candidate_sort_key(same, same, 999, "a")


def test_candidate_key_ranks_what_is_held_then_what_is_applied() -> None:
    held, behind = p("0-1-100"), p("0-1-90")
    # a laggard whose relay log got further outranks an up-to-date node
    assert candidate_sort_key(p("0-1-101"), behind, 0, "z") > candidate_sort_key(held, held, 999, "a")
    # same holdings: the one with less left to apply goes first, before priority
    assert candidate_sort_key(held, held, 0, "z") > candidate_sort_key(held, behind, 999, "a")


def test_furthest_with_takes_the_further_gtid_of_each_domain() -> None:
    applied, received = p("0-1-80,1-2-5"), p("0-1-83,2-3-1")
    assert applied.furthest_with(received) == p("0-1-83,1-2-5,2-3-1")
    assert received.furthest_with(applied) == p("0-1-83,1-2-5,2-3-1")
    assert p("0-1-90").furthest_with(p("0-1-83")) == p("0-1-90")
    assert p("").furthest_with(p("")) == p("")


def test_diverging_domains() -> None:
    primary = p("0-2-105,1-1-7")
    assert p("0-1-100,1-1-7").diverging_domains(primary) == ()  # behind: nothing provable
    assert p("0-1-106").diverging_domains(primary) == (0,)  # ahead
    assert p("0-1-105").diverging_domains(primary) == (0,)  # same seq, other server: forked
    assert p("2-1-3").diverging_domains(primary) == (2,)  # domain the primary never saw
    assert p("0-2-105,2-1-0").diverging_domains(primary) == ()  # seq 0 holds nothing


def test_own_unreplicated_domains() -> None:
    mine = p("0-1-101,1-3-5")
    assert mine.own_unreplicated_domains(1, [p("0-1-100")]) == (0,)
    assert mine.own_unreplicated_domains(1, [p("0-1-101")]) == ()
    assert mine.own_unreplicated_domains(1, [p("0-2-102")]) == ()
    assert mine.own_unreplicated_domains(1, [p("0-2-101")]) == (0,)  # same seq, forked
    assert mine.own_unreplicated_domains(3, []) == (1,)
    assert mine.own_unreplicated_domains(9, []) == ()
    assert p("0-1-0").own_unreplicated_domains(1, []) == ()


gtid_positions = st.dictionaries(
    st.integers(0, 3), st.tuples(st.integers(0, 4), st.integers(0, 50)), max_size=4
).map(GtidPosition.from_mapping)


@given(gtid_positions)
def test_parse_of_str_is_identity(position: GtidPosition) -> None:
    assert GtidPosition.parse(str(position)) == position


@given(gtid_positions, gtid_positions)
def test_domination_implies_rank(a: GtidPosition, b: GtidPosition) -> None:
    if a.covers(b):
        assert a.rank_key()[0] >= b.rank_key()[0]
    if a.strictly_ahead_of(b):
        assert a.rank_key() > b.rank_key()
    assert a.covers(a)
    assert a.diverging_domains(a) == ()


@given(gtid_positions, gtid_positions)
def test_nothing_diverges_from_a_covering_history_written_by_the_same_servers(
    a: GtidPosition, b: GtidPosition
) -> None:
    merged = GtidPosition.from_mapping({
        domain: max(a.as_mapping().get(domain, (0, 0)), b.as_mapping().get(domain, (0, 0)),
                    key=lambda pair: pair[1])
        for domain in {*a.as_mapping(), *b.as_mapping()}
    })
    assert merged.covers(a) and merged.covers(b)


def test_binlog_state_keeps_every_servers_stream() -> None:
    """What a position cannot show (issue 16): n3's own token on top of n2's writes, not a fork."""
    n3 = BinlogState.parse("0-1-1,0-2-2,0-3-3")
    n2 = BinlogState.parse("0-2-2, 0-1-1")  # any order, as MariaDB lists it
    assert str(n2) == "0-1-1,0-2-2" and str(BinlogState.parse("")) == ""
    assert n3.seq_no(0, 2) == 2 and n3.seq_no(0, 4) == 0 and n3.seq_no(1, 1) == 0
    assert n3.holds(Gtid(0, 2, 2)) and not n2.holds(Gtid(0, 3, 3))
    assert n2.beyond(n3) == () and n3.beyond(n2) == (Gtid(0, 3, 3),)
    # With what it applied and received: the furthest of each stream.
    merged = BinlogState.merged(n2.gtids, GtidPosition.parse("0-2-5").gtids, [Gtid(0, 1, 0)])
    assert str(merged) == "0-1-1,0-2-5"


def test_binlog_state_rejects_what_mariadb_never_reports() -> None:
    with pytest.raises(GtidParseError, match="one GTID per"):
        BinlogState((Gtid(0, 1, 1), Gtid(0, 1, 2)))
    with pytest.raises(GtidParseError, match="sorted"):
        BinlogState((Gtid(0, 2, 1), Gtid(0, 1, 2)))
    with pytest.raises(GtidParseError):
        BinlogState.parse("0-1")

