"""Asks every member for a failsafe promise (docs/failsafe.md), off the decision loop.

One round at a time: the send time is taken before the first request leaves, every member is
asked in parallel with a timeout, and answers are recorded as they arrive. A member that does
not answer in time counts as a no. The loop reads the rounds through :meth:`PromiseClient.view`
and is woken when a round completes; ``on_complete`` runs first, so the gate's deadline can move
at once, as a renewal moves it (the decision loop may be busy for a while).

Members are asked at their API URL (``api_url`` of their records; a bare ``host:port`` from an
older agent's record means ``http://``), with the cluster token when one is configured and, over
``https://``, with this agent's client certificate (``tls``).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from dbfence.agent.failsafe_view import PromiseAnswer, PromiseRound

log = logging.getLogger("dbfence.agent")

PROMISE_PATH = "/failsafe/promise"


class PromiseClient:
    def __init__(self, *, cluster: str, node: str, token: str | None, wake: threading.Event, timeout: float,
                 addresses: Callable[[], Mapping[str, str]],
                 on_complete: Callable[[], None] = lambda: None, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._on_complete = on_complete
        self._cluster = cluster
        self._node = node
        self._token = token
        self._wake = wake
        self._timeout = timeout
        self._addresses = addresses
        self._mutex = threading.Lock()
        self._last: PromiseRound | None = None
        self._complete: PromiseRound | None = None
        self._asking = False
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dbfence-promise")

    def view(self) -> tuple[PromiseRound | None, PromiseRound | None, bool]:
        """(latest round, latest round every member asked promised, a round in flight)."""
        with self._mutex:
            return self._last, self._complete, self._asking

    def ask(self, token: int, members: tuple[str, ...], duration: float) -> None:
        with self._mutex:
            if self._asking:
                return
            self._asking = True
            sent_at = time.monotonic()  # before any request leaves: promises start later
            self._last = PromiseRound(token, sent_at, frozenset(members))
        addresses = dict(self._addresses())
        if not members:
            self._finish(sent_at)
            return
        remaining = [len(members)]

        def one(member: str) -> None:
            answer = self._request(member, addresses.get(member, ""), token, duration)
            with self._mutex:
                if self._last is not None and self._last.sent_at == sent_at:
                    self._last = replace(self._last, answers=(*self._last.answers, answer))
                remaining[0] -= 1
                done = remaining[0] == 0
            if done:
                self._finish(sent_at)

        for member in members:
            self._pool.submit(one, member)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _finish(self, sent_at: float) -> None:
        with self._mutex:
            current = self._last
            if current is not None and current.sent_at == sent_at:
                if current.asked <= current.granted().keys():
                    self._complete = current
                self._asking = False
        try:
            self._on_complete()
        except Exception:  # the loop re-arms the gate from the same rounds anyway
            log.exception("applying a promise round failed")
        self._wake.set()

    def _request(self, member: str, address: str, token: int, duration: float) -> PromiseAnswer:
        if not address:
            return PromiseAnswer(member, None, "no HTTP address known")
        base = address if "://" in address else f"http://{address}"
        body = json.dumps({"cluster": self._cluster, "primary": self._node, "token": token,
                           "duration": duration}).encode()
        headers = {"Content-Type": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(f"{base.rstrip('/')}{PROMISE_PATH}", data=body, method="POST",
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout,
                                        context=self._tls if base.startswith("https:") else None) as response:
                payload = json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            return PromiseAnswer(member, None, f"HTTP {exc.code}: {detail}")
        except (OSError, ValueError) as exc:  # refused, timed out, reset, not JSON
            return PromiseAnswer(member, None, f"no answer: {exc}")
        granted = payload.get("granted") if isinstance(payload, dict) else None
        if not isinstance(granted, (int, float)) or isinstance(granted, bool) or granted <= 0:
            return PromiseAnswer(member, None, str(payload.get("refusal", "refused"))
                                 if isinstance(payload, dict) else "refused")
        return PromiseAnswer(member, float(granted))
