"""The fault matrix on real servers: every fault under write load, checked for lost writes and
two writers, with the unavailability it caused.

Each round starts writers that find the primary through discovery (the etcd key, or Consul DNS)
and write through the gates, injects one fault, holds it, heals it, waits for service, then
reads every server and checks the history (:mod:`dbfence.lab.history`). A lab is reused while
the last round left it settled with no errant transactions; otherwise the next round gets a
fresh one.

    .venv/bin/python benchmarks/faults.py --fault all --runs 3
    .venv/bin/python benchmarks/faults.py --fault mysqld-kill --runs 5 --dcs consul
    .venv/bin/python benchmarks/faults.py --fault consul-agent-restart --runs 2 --dcs consul

It prints one line per round, then a table (fault, runs, acknowledged writes lost, overlapping
writers, RTO median and max over the rounds where writes came back, rounds where they never did,
unknown outcomes and how many landed, rounds that left errant transactions, failovers), and ends
with one JSON line. The exit status is 1 when a row lost a write, had two writers, never
recovered, or (for the faults that must keep the primary: too many connections, a connection
flood through the gate) failed over or stalled the connected writers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from dbfence.lab.agents import AgentTuning
from dbfence.lab.faults import (
    Fault,
    RoundResult,
    all_faults,
    applicable,
    run_matrix,
    scratch_space,
    unavailable,
)


def describe(result: RoundResult) -> str:
    v = result.verdict
    rto = "-" if result.rto is None else f"{result.rto:.2f}s"
    extra = f" errant={dict(v.errant)}" if v.errant else ""
    notes = f" ({'; '.join(result.notes)})" if result.notes else ""
    problems = f" PROBLEMS: {'; '.join(result.problems)}" if result.problems else ""
    gap = "-" if result.longest_gap_during_fault is None else f"{result.longest_gap_during_fault:.2f}s"
    return (f"{result.fault}: primary {result.old_primary} -> {v.final_primary}, rto {rto}, "
            f"acknowledged {v.acknowledged}, lost {len(v.lost)}, overlapping {v.overlapping}, "
            f"unknown {v.unknown} (landed {len(v.unknown_landed)}), longest gap during the fault "
            f"{gap}{extra}{notes}{problems}")


def summarise(fault: Fault, results: list[RoundResult], tuning: AgentTuning) -> dict[str, Any]:
    rtos = [r.rto for r in results if r.rto is not None]
    goal = fault.rto_goal(tuning)
    median = statistics.median(rtos) if rtos else None
    return {
        "fault": fault.name, "runs": len(results),
        "lost": sum(len(r.verdict.lost) for r in results),
        "overlapping": sum(r.verdict.overlapping for r in results),
        "rto_median_s": None if median is None else round(median, 3),
        "rto_max_s": round(max(rtos), 3) if rtos else None,
        "unrecovered": len(results) - len(rtos),
        "unknown": sum(r.verdict.unknown for r in results),
        "unknown_landed": sum(len(r.verdict.unknown_landed) for r in results),
        "errant_rounds": sum(1 for r in results if r.verdict.errant),
        "failovers": sum(1 for r in results if r.failed_over),
        # faults that must keep the primary: rounds whose own checks failed, and the longest stretch
        # without an acknowledged write while the fault was held
        "problem_rounds": sum(1 for r in results if r.problems),
        "longest_gap_during_fault_s": max((r.longest_gap_during_fault for r in results
                                           if r.longest_gap_during_fault is not None), default=None),
        "acknowledged": sum(r.verdict.acknowledged for r in results),
        "rto_goal_s": goal,
        # met only when every round recovered and the median is within the goal
        "goal_met": None if goal is None else
        (median is not None and median <= goal and len(rtos) == len(results)),
    }


def table(rows: list[dict[str, Any]]) -> str:
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"
    header = (f"{'fault':<28} {'runs':>4} {'lost':>5} {'overlap':>7} {'rto p50':>8} {'rto max':>8} "
              f"{'goal':>6} {'unrecovered':>11} {'unknown(landed)':>15} {'errant':>6} {'failovers':>9}")
    lines = [header, "-" * len(header)]
    for row in rows:
        goal = "-" if row["rto_goal_s"] is None else \
            f"{'ok' if row['goal_met'] else 'MISS'}"
        lines.append(f"{row['fault']:<28} {row['runs']:>4} {row['lost']:>5} {row['overlapping']:>7} "
                     f"{seconds(row['rto_median_s']):>8} {seconds(row['rto_max_s']):>8} {goal:>6} "
                     f"{row['unrecovered']:>11} "
                     f"{str(row['unknown']) + '(' + str(row['unknown_landed']) + ')':>15} "
                     f"{row['errant_rounds']:>6} {row['failovers']:>9}")
    return "\n".join(lines)


def main() -> int:
    faults = {f.name: f for f in all_faults()}
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--fault", default="all", help=f"one of {', '.join(faults)}, or all")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dcs", choices=["etcd", "consul"], default="etcd")
    parser.add_argument("--ttl", type=float, default=3.0)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=2, help="concurrent writer connections")
    parser.add_argument("--rejoin", choices=["manual", "truncate", "rebuild"], default="manual",
                        help="the agents' [rejoin] mode (truncate: the old primary repairs itself; "
                             "rebuild: and is cloned from a replica when truncation fails)")
    parser.add_argument("--remote-path", choices=["off", "on"], default="off",
                        help="gate.remote_path: on = the writers of namespaced labs (partition faults) "
                             "reach mysqld through the kernel's forwarding (docs/gate-paths.md)")
    args = parser.parse_args()
    if args.fault != "all" and args.fault not in faults:
        parser.error(f"unknown fault {args.fault!r}; pick one of {', '.join(faults)}")
    chosen = [f for f in faults.values() if applicable(f, args.dcs)] if args.fault == "all" \
        else [faults[args.fault]]
    for fault in [f for f in chosen if unavailable(f)]:
        print(f"{fault.name}: {unavailable(fault)}")
    chosen = [f for f in chosen if unavailable(f) is None]
    tuning = AgentTuning(ttl=args.ttl, margin=args.margin, rejoin=args.rejoin, remote_path=args.remote_path)
    logs = Path(tempfile.mkdtemp(prefix="dbfence-faults-logs-"))
    with scratch_space(Path(tempfile.mkdtemp(prefix="dbfence-faults-"))) as root:
        results = run_matrix(chosen, args.runs, root, args.dcs, tuning, clients=args.clients,
                             keep_logs=logs, report=lambda r: print(describe(r), flush=True))
    rows = [summarise(f, [r for r in results if r.fault == f.name], tuning) for f in chosen]
    print(table(rows))
    if any(logs.iterdir()):
        print(f"logs of the rounds that left their lab unsettled: {logs}")
    else:
        logs.rmdir()
    print(json.dumps({"dcs": args.dcs, "ttl": args.ttl, "margin": args.margin, "runs": args.runs,
                      "faults": rows}))
    return 0 if all(row["lost"] == 0 and row["overlapping"] == 0 and row["unrecovered"] == 0
                    and row["problem_rounds"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
