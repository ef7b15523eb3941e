"""A long random-fault soak on real servers: a seeded nemesis, writers and readers through
discovery and the gates, and the history checker at every quiet point and at the end.

    .venv/bin/python benchmarks/soak.py --duration 30m --seed 1
    .venv/bin/python benchmarks/soak.py --duration 10m --seed 7 --dcs consul --quiet 20

It prints the nemesis schedule (all of it derived from the seed), one line per fault as it
strikes, a check after every quiet period, then the fault timeline, the RTO distribution per
fault kind, the counts, any invariant broken (with the seed, the time, and the command that
replays the run), saves a plot (PNG), and ends with one JSON line. Exit status 1 when an
invariant broke; the agents' logs and the history are then kept and their directory printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from dbfence.lab.agents import AgentTuning
from dbfence.lab.faults import scratch_space
from dbfence.lab.nemesis import NemesisTuning
from dbfence.lab.soak import Soak, SoakConfig
from dbfence.lab.soak_plot import draw
from dbfence.lab.soak_report import rto_by_kind, rto_table, summary, timeline

DEFAULT_NEMESIS = NemesisTuning()


def seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 30m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--duration", type=seconds, default=seconds("30m"))
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--dcs", choices=["etcd", "consul"], default="etcd")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--quiet", type=seconds, default=30.0,
                        help="seconds without faults before each check that the cluster is whole")
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--kinds", default=None, help="comma-separated fault kinds to use (default: "
                        "every kind the lab can take; the replay command names them)")
    parser.add_argument("--rejoin", choices=["manual", "truncate"], default="truncate",
                        help="the agents' [rejoin] mode (truncate: a fenced former primary repairs itself "
                        "where it can prove its errant transactions were never acknowledged)")
    parser.add_argument("--failsafe", action="store_true",
                        help="agents with [failover] failsafe = true: a primary cut off from the DCS "
                        "writes on by its peers' promises (the +failsafe fault rows test it; without it "
                        "they are plain DCS outages)")
    parser.add_argument("--keep-going", action="store_true",
                        help="go on after two quiet checks in a row found the cluster not whole")
    parser.add_argument("--max-faults-per-burst", type=int, default=DEFAULT_NEMESIS.max_faults_per_burst,
                        help="the most faults one burst strikes (the first at once, the rest as overlaps)")
    parser.add_argument("--overlap-chance", type=float, default=DEFAULT_NEMESIS.overlap_chance,
                        help="the chance that a burst strikes more than one fault")
    parser.add_argument("--opening-share", type=float, default=DEFAULT_NEMESIS.opening_share,
                        help="the share of bursts that open with --opening-kind against the whole "
                        "cluster (0: every kind as likely; a p99 of one kind needs many samples)")
    parser.add_argument("--opening-kind", default=DEFAULT_NEMESIS.opening_kind)
    parser.add_argument("--plot", type=Path, default=None, help="where to save the PNG "
                        "(default: soak-seed<S>.png in the current directory)")
    args = parser.parse_args()
    tuning = AgentTuning(ttl=args.ttl, margin=args.margin, rejoin=args.rejoin, failsafe=args.failsafe)
    with scratch_space(Path(tempfile.mkdtemp(prefix="dbfence-soak-"))) as root:
        config = SoakConfig(seed=args.seed, duration=args.duration, root=root, dcs=args.dcs,
                            nodes=args.nodes, quiet=args.quiet, tuning=tuning,
                            kinds=None if args.kinds is None else tuple(args.kinds.split(",")),
                            stop_when_stuck=not args.keep_going,
                            nemesis=NemesisTuning(max_faults_per_burst=args.max_faults_per_burst,
                                                  overlap_chance=args.overlap_chance,
                                                  opening_kind=args.opening_kind,
                                                  opening_share=args.opening_share))
        result = Soak(config, say=lambda line: print(line, flush=True)).run()
    config = result.config
    stats = rto_by_kind(result.records)
    print()
    print(timeline(result.records))
    print()
    print(rto_table(stats))
    print()
    c = result.counts
    print(f"writes: {c.acknowledged} acknowledged, {c.refused} refused, {c.unknown} unknown "
          f"({c.unknown_landed} landed); reads: {c.reads} checked, {c.extra['failed_reads']} failed; "
          f"lost {c.lost} (counted at {c.extra['lost_checked_at_s']}s, the last check with a primary), "
          f"two writers {c.two_writers}, stale reads {c.stale_reads}, admitted without a lease or "
          f"promises {c.extra['unleased']} ({c.extra['promises']} promises given); "
          f"quiet checks {c.quiet_checks}, not whole {c.not_whole}")
    for breach in result.breaches:
        print(f"INVARIANT BROKEN: seed {args.seed}, at {breach.at:.1f}s: {breach.invariant}: {breach.detail}")
    if result.kept is not None:
        print(f"logs and history kept in {result.kept}")
        print(f"replay: {config.replay_command()}")
    plot = args.plot or Path(f"soak-seed{args.seed}.png")
    draw(plot, result.attempts, result.started, result.ended - result.started, result.records,
         result.role_changes, f"dbfence soak, seed {args.seed}, {args.dcs}, {args.nodes} nodes",
         [(at, whole.whole) for at, whole in result.checks])
    print(f"plot: {plot}")
    print(json.dumps({**summary(args.seed, args.dcs, args.nodes, result.ended - result.started, c, stats,
                                result.breaches, result.records, config.replay_command()),
                      "plot": str(plot)}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
