"""The promises this agent gave (docs/failsafe.md), kept on disk so they survive its restart.

A promise is written to ``promises.json`` in the state directory (temporary file, fsync, rename,
fsync of the directory) *before* the answer leaves, so an agent that crashes after answering
still knows it. Giving a promise and sending an acquire are serialised by one mutex: the
executor asks :meth:`PromiseBook.may_acquire` under it, so no promise can slip in between a
decision to race and the acquire itself.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dbfence.agent.failsafe import PromiseDecision
from dbfence.agent.failsafe_view import GivenPromise
from dbfence.durable import write_json_atomically

log = logging.getLogger("dbfence.agent")

FILE_NAME = "promises.json"
UNKNOWN = "<unknown>"


class PromiseBookError(RuntimeError):
    """The promise file cannot be written: no promise may be given."""


class PromiseBook:
    def __init__(self, state_dir: Path, longest_promise: float) -> None:
        self.path = state_dir / FILE_NAME
        self._longest = longest_promise
        self._mutex = threading.Lock()
        self._given: GivenPromise | None = None

    # ------------------------------------------------------------------ start
    def load(self) -> GivenPromise | None:
        """Read the promise a previous run may have given; it binds this run from its start.

        A promise whose wall-clock end is not over (with one promise period of tolerance for
        clock steps) counts for its full duration from now, on the monotonic clock. A file that
        cannot be read counts as a promise given just now, for the longest duration.
        """
        now = time.monotonic()
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s (%s): not racing for %.1f s", self.path, exc.strerror, self._longest)
            return self._remember(GivenPromise(UNKNOWN, 0, now + self._longest))
        try:
            data = json.loads(raw)
            to, token = str(data["to"]), int(data["token"])
            duration, until_wall = float(data["duration"]), float(data["until_wall"])
        except (ValueError, KeyError, TypeError):
            log.warning("%s is not a promise record: not racing for %.1f s", self.path, self._longest)
            return self._remember(GivenPromise(UNKNOWN, 0, now + self._longest))
        if time.time() >= until_wall + duration:
            return None
        promise = GivenPromise(to, token, now + min(duration, self._longest))
        log.info(json.dumps({"event": "promise_kept_across_restart", "to": to, "token": token,
                             "seconds": round(promise.until - now, 3)}))
        return self._remember(promise)

    def check_writable(self) -> None:
        """Raise PromiseBookError unless the state directory takes a file (checked at start)."""
        probe = self.path.with_name(".write-probe")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise PromiseBookError(f"state directory {self.path.parent}: {exc.strerror}") from None

    # ------------------------------------------------------------------ use
    def given(self) -> GivenPromise | None:
        return self._given

    def grant(self, to: str, token: int, received_at: float,
              answer: Callable[[], PromiseDecision]) -> PromiseDecision:
        """Decide (``answer``, the pure rule) and, if it promises, persist before returning."""
        with self._mutex:
            decision = answer()
            if decision.granted is None:
                return decision
            until = received_at + decision.granted
            current = self._given
            if current is not None and current.until > until:
                return decision  # an earlier promise already binds us for longer
            self._persist(to, token, decision.granted, until - time.monotonic())
            self._given = GivenPromise(to, token, until)
            return decision

    @contextlib.contextmanager
    def may_acquire(self, now: Callable[[], float] = time.monotonic) -> Iterator[bool]:
        """Hold off promises while an acquire is sent; yields False while a promise is live."""
        with self._mutex:
            given = self._given
            yield given is None or now() >= given.until

    # ------------------------------------------------------------------ internals
    def _remember(self, promise: GivenPromise) -> GivenPromise:
        self._given = promise
        return promise

    def _persist(self, to: str, token: int, duration: float, left: float) -> None:
        record = {"to": to, "token": token, "duration": duration, "until_wall": time.time() + left,
                  "written_at": time.time()}
        try:
            write_json_atomically(self.path, record, indent=None)
        except OSError as exc:
            raise PromiseBookError(f"cannot persist the promise in {self.path}: {exc.strerror}") from None
