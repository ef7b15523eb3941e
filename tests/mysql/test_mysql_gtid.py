"""Pure GTID logic: parsing, per-domain comparison, errant detection, candidate ranking."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbfence.mysql.gtid import (
    Comparison,
    ErrantRange,
    Gtid,
    GtidParseError,
    GtidPosition,
    GtidState,
    describe_errant,
    in_errant_ranges,
    parse_binlog_gtid_event,
    parse_binlog_gtid_list,
    ranges_predate,
    rank_candidates,
)


def pos(text: str) -> GtidPosition:
    return GtidPosition.parse(text)


def test_parse_and_format_round_trip_sorted_by_domain() -> None:
    p = pos("1-2-7, 0-1-100")
    assert str(p) == "0-1-100,1-2-7"
    assert p.seq(0) == 100 and p.seq(1) == 7 and p.seq(5) == 0
    assert pos("") == GtidPosition() and GtidPosition.parse(None) == GtidPosition()


@pytest.mark.parametrize(
    "text", ["0-1", "a-b-c", "0-1-2-3", "0--1-2", "-1-1-1", "0-1-99999999999999999999999"]
)
def test_bad_gtid_text_is_refused_with_the_text_named(text: str) -> None:
    with pytest.raises(GtidParseError):
        pos(text)


def test_position_refuses_two_gtids_in_one_domain() -> None:
    with pytest.raises(GtidParseError, match="one GTID per domain"):
        pos("0-1-5,0-2-6")


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("0-1-10", "0-1-10", Comparison.EQUAL),
        ("0-1-11", "0-1-10", Comparison.AHEAD),
        ("0-2-11", "0-1-10", Comparison.AHEAD),  # new primary's writes continue the domain
        ("0-1-9", "0-1-10", Comparison.BEHIND),
        ("0-2-10", "0-1-10", Comparison.DIVERGED),  # two servers wrote the same slot
        ("0-1-10,1-1-5", "0-1-10", Comparison.AHEAD),  # extra domain
        ("0-1-10", "0-1-10,1-1-5", Comparison.BEHIND),
        ("0-1-11,1-1-4", "0-1-10,1-1-5", Comparison.DIVERGED),  # ahead in one, behind in another
        ("", "", Comparison.EQUAL),
        ("", "0-1-1", Comparison.BEHIND),
    ],
)
def test_compare_per_domain(a: str, b: str, expected: Comparison) -> None:
    assert pos(a).compare(pos(b)) is expected
    mirrored = {Comparison.AHEAD: Comparison.BEHIND, Comparison.BEHIND: Comparison.AHEAD}
    assert pos(b).compare(pos(a)) is mirrored.get(expected, expected)


def test_merged_latest_takes_highest_seq_per_domain() -> None:
    binlog = pos("0-1-120,2-1-3")
    slave = pos("0-2-100,1-2-9")
    assert str(binlog.merged_latest(slave)) == "0-1-120,1-2-9,2-1-3"


def test_errant_writes_of_a_former_primary_are_named_exactly() -> None:
    # db1 wrote 101..105 after the others stopped receiving; db2 took over and wrote 101..110.
    former = GtidState.parse("0-1-105")
    new_primary = GtidState.parse("0-1-100,0-2-110")
    errant = former.errant_against(new_primary)
    assert errant == (ErrantRange(0, 1, 100, 105, primary_has_stream=True),)
    assert describe_errant(errant) == "0-1-101..0-1-105"
    # by position alone it would look merely behind: this is why the state is used
    assert pos("0-1-105").compare(pos("0-2-110")) is Comparison.BEHIND


def test_single_errant_gtid_is_named_as_one() -> None:
    errant = GtidState.parse("0-1-101").errant_against(GtidState.parse("0-1-100,0-2-110"))
    assert describe_errant(errant) == "0-1-101"


def test_local_write_on_a_replica_is_errant_even_below_the_primary_seq() -> None:
    replica = GtidState.parse("0-1-100,0-3-50")
    primary = GtidState.parse("0-1-200")
    (errant,) = replica.errant_against(primary)
    assert (errant.domain, errant.server_id, errant.last_seq, errant.primary_has_stream) == (0, 3, 50, False)
    assert "0-3-50" in str(errant) and "never replicated" in str(errant)


def test_errant_in_several_domains() -> None:
    node = GtidState.parse("0-1-10,1-1-7,2-4-3")
    primary = GtidState.parse("0-1-10,1-1-5,2-4-3")
    assert describe_errant(node.errant_against(primary)) == "1-1-6..1-1-7"
    node2 = GtidState.parse("0-1-12,1-1-7")
    assert describe_errant(node2.errant_against(primary)) == "0-1-11..0-1-12, 1-1-6..1-1-7"


def test_clean_node_behind_or_equal_has_no_errant() -> None:
    primary = GtidState.parse("0-1-100,0-2-110")
    assert GtidState.parse("0-1-100").errant_against(primary) == ()
    assert GtidState.parse("0-1-90").errant_against(primary) == ()
    assert GtidState.parse("0-1-100,0-2-105").errant_against(primary) == ()
    assert GtidState().errant_against(primary) == ()


def test_state_from_sources_unions_binlog_state_and_slave_pos() -> None:
    state = GtidState.from_sources(GtidState.parse("0-1-100,0-3-4"), pos("0-1-90,1-2-8"))
    assert str(state) == "0-1-100,0-3-4,1-2-8"


def test_ranking_single_leader() -> None:
    r = rank_candidates({"db2": pos("0-1-100"), "db3": pos("0-1-98"), "db4": pos("0-1-99")})
    assert r.tiers == (("db2",), ("db4",), ("db3",))
    assert r.leaders == ("db2",) and r.conflict is None


def test_ranking_ties_share_a_tier_and_are_all_leaders() -> None:
    r = rank_candidates({"db3": pos("0-1-100"), "db2": pos("0-1-100"), "db4": pos("0-1-7")})
    assert r.tiers == (("db2", "db3"), ("db4",))
    assert r.leaders == ("db2", "db3")


def test_ranking_multi_domain_incomparable_has_no_leader() -> None:
    r = rank_candidates({"db2": pos("0-1-100,1-5-3"), "db3": pos("0-1-99,1-5-4"), "db4": pos("0-1-1")})
    assert r.tiers[0] == ("db2", "db3") and r.tiers[1] == ("db4",)
    assert r.leaders == ()
    assert r.conflict is not None and "db2 at 0-1-100,1-5-3" in r.conflict


def test_ranking_diverged_same_seq_has_no_leader() -> None:
    r = rank_candidates({"db2": pos("0-1-100"), "db3": pos("0-3-100")})
    assert r.leaders == () and r.conflict is not None


def test_ranking_extra_domain_wins() -> None:
    r = rank_candidates({"db2": pos("0-1-100"), "db3": pos("0-1-100,1-3-1")})
    assert r.leaders == ("db3",)
    assert rank_candidates({}).leaders == () and rank_candidates({}).conflict is None


gtids = st.builds(Gtid, st.integers(0, 3), st.integers(1, 4), st.integers(0, 50))
positions = st.lists(gtids, max_size=4).map(lambda gs: GtidPosition.of({g.domain: g for g in gs}.values()))


@given(positions)
def test_property_parse_format_round_trip(p: GtidPosition) -> None:
    assert GtidPosition.parse(str(p)) == p
    assert p.compare(p) is Comparison.EQUAL


@given(positions, positions)
def test_property_compare_is_antisymmetric(a: GtidPosition, b: GtidPosition) -> None:
    ab, ba = a.compare(b), b.compare(a)
    mirror = {Comparison.AHEAD: Comparison.BEHIND, Comparison.BEHIND: Comparison.AHEAD}
    assert ba is mirror.get(ab, ab)


@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), positions, max_size=4))
def test_property_leaders_cover_everyone_and_tiers_partition(cands: dict[str, GtidPosition]) -> None:
    r = rank_candidates(cands)
    assert sorted(n for tier in r.tiers for n in tier) == sorted(cands)
    for leader in r.leaders:
        assert all(cands[leader].covers(p) for p in cands.values())
        assert leader in r.tiers[0]
    # nobody in a later tier is ahead of anybody in tier 0
    for tier in r.tiers[1:]:
        for name in tier:
            assert not any(cands[name].compare(cands[top]) is Comparison.AHEAD for top in r.tiers[0])


states = st.lists(gtids, max_size=5).map(
    lambda gs: GtidState.of({(g.domain, g.server_id): g for g in gs}.values())
)


@given(states, states)
def test_property_errant_empty_iff_primary_has_every_stream(node: GtidState, primary: GtidState) -> None:
    errant = node.errant_against(primary)
    ps = primary.streams
    expected_clean = all(ps.get(k, -1) >= seq for k, seq in node.streams.items())
    assert (errant == ()) is expected_clean
    # after the primary absorbs the node's history there is nothing errant left
    assert node.errant_against(GtidState.from_sources(primary, node)) == ()


def test_binlog_event_parsing_and_range_membership() -> None:
    assert parse_binlog_gtid_event("BEGIN GTID 0-1-3") == Gtid(0, 1, 3)
    assert parse_binlog_gtid_event("GTID 2-5-17 cid=9") == Gtid(2, 5, 17)
    assert parse_binlog_gtid_event("COMMIT /* xid=7 */") is None
    assert parse_binlog_gtid_list("[0-1-3,0-2-7]") == GtidState.parse("0-1-3,0-2-7")
    assert parse_binlog_gtid_list("[]") == GtidState()
    # mariadb-binlog wraps a list of several streams over comment lines (10.11, three servers).
    assert parse_binlog_gtid_list("[0-2-5,\n# 0-3-7,\n# 0-1-9]") == GtidState.parse("0-1-9,0-2-5,0-3-7")
    ranges = GtidState.parse("0-2-20").errant_against(GtidState.parse("0-2-11,0-3-19"))
    assert in_errant_ranges(Gtid(0, 2, 20), ranges) and in_errant_ranges(Gtid(0, 2, 12), ranges)
    assert not in_errant_ranges(Gtid(0, 2, 11), ranges) and not in_errant_ranges(Gtid(0, 3, 15), ranges)
    assert ranges_predate(GtidState.parse("0-2-11,0-3-5"), ranges)
    assert not ranges_predate(GtidState.parse("0-2-12"), ranges)
