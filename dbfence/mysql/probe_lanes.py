"""Probe lanes: one worker thread per lane, one job at a time, each with its own timeout.

A round starts every lane whose previous job has returned, then collects each up to that lane's
timeout (see ``probes.py``). Kept apart from the probes themselves: this is the scheduling that
keeps a stuck probe from piling up threads or connections, whatever the probe does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from dbfence.mysql.verdict import ProbeKind, Reason, Verdict

JobResult = list[Verdict]


@dataclass
class _Job:
    future: Future[JobResult]
    started: float
    reported: bool = False  # its verdicts (result or timeout) went out in some round
    timed_out: bool = False
    abandoned: bool = False


@dataclass
class Lane:
    name: str
    kinds_on_timeout: tuple[ProbeKind, ...]
    timeout_reason: Reason
    timeout_s: float
    # a job still stuck this long after its start is abandoned (e.g. its statement killed)
    abandon_after_s: float | None = None
    on_abandon: Callable[[], None] | None = None
    # keep failing every round while a late job is still running (hang detectors), or report a
    # late job once (probes whose own socket timeouts end them anyway)
    repeat_while_running: bool = True
    executor: ThreadPoolExecutor = field(init=False)
    job: _Job | None = None

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"dbfence-probe-{self.name}")

    def start(self, work: Callable[[], JobResult], now: float) -> bool:
        """Start ``work`` unless the previous job is running or its result is not reported yet."""
        job = self.job
        if job is not None and (not job.future.done() or not job.reported):
            return False
        self.job = _Job(self.executor.submit(_guarded(work, self.kinds_on_timeout)), now)
        return True

    @property
    def pending(self) -> bool:
        """A job was started and has given no verdict yet, or is late and still running."""
        job = self.job
        return job is not None and (not job.reported or (job.timed_out and not job.future.done()))

    def collect(self, round_end: float) -> JobResult:
        """Verdicts of this lane for the round ending at ``round_end`` (monotonic).

        Waits until the job answers, its own timeout passes, or the round ends, whichever comes
        first. A job that is neither done nor late yet gives no verdict this round: it is
        collected by a later one, so rounds keep their cadence.
        """
        job = self.job
        if job is None:
            return []
        if job.timed_out:  # reported as timed out in an earlier round and still not back
            if job.future.done():
                return []
            self._maybe_abandon(job)
            if not self.repeat_while_running:
                return []
            return self._timeout_verdicts(job, still_running=True)
        if job.reported:
            return []
        job_deadline = job.started + self.timeout_s
        try:
            result = job.future.result(timeout=max(0.0, min(job_deadline, round_end) - time.monotonic()))
        except FutureTimeout:
            if time.monotonic() < job_deadline:
                return []  # not late yet
            job.timed_out = job.reported = True
            return self._timeout_verdicts(job, still_running=False)
        job.reported = True
        return result

    def _maybe_abandon(self, job: _Job) -> None:
        if job.abandoned or self.abandon_after_s is None or self.on_abandon is None:
            return
        if time.monotonic() - job.started >= self.abandon_after_s:
            job.abandoned = True
            self.on_abandon()

    def _timeout_verdicts(self, job: _Job, *, still_running: bool) -> JobResult:
        elapsed = time.monotonic() - job.started
        detail = (
            f"still running after {elapsed:.2f} s"
            if still_running
            else f"no answer within {self.timeout_s:.2f} s"
        )
        return [Verdict.failed(k, self.timeout_reason, detail, elapsed) for k in self.kinds_on_timeout]

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def _guarded(work: Callable[[], JobResult], kinds: Sequence[ProbeKind]) -> Callable[[], JobResult]:
    """A probe job never raises: an unexpected error is a failed verdict naming it."""

    def run() -> JobResult:
        started = time.monotonic()
        try:
            return work()
        except Exception as exc:  # turned into a verdict, never lost
            elapsed = time.monotonic() - started
            return [Verdict.failed(k, Reason.QUERY_FAILED, f"probe error: {exc}", elapsed) for k in kinds]

    return run
