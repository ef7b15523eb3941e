"""One etcd watch on the cluster prefix, kept open and shared by every ``wait_for_change``.

A watch per wait cost a new gRPC stream, the thread gRPC starts to send its requests, and a timer
thread to end it, each time anything in the cluster changed: on an idle cluster whose members
publish their replication positions, the largest part of an agent's DCS work. The stream here
lives until it fails, the transport moves to another member, or the caller's index falls before
what it covers; then the next wait opens a new one from the caller's index, as before. One reader
thread per stream notes the newest revision it saw; waiters only look at that.

A stream is opened with ``hasleader``: a member cut off from its quorum refuses it, and cancels
it once it has been without a leader for a while, instead of silently delivering nothing. The
caller (the agent's DCS sensor) also reads a snapshot after every wait, at least once per poll
interval, so a member that hangs is noticed by that read, which fails over; the watch follows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
from pyetcd import etcdrpc

from dbfence.locks.errors import DcsUnreachable
from dbfence.locks.etcd_transport import EtcdTransport, Metadata, range_end

# How long a reader thread may take to notice its stream was cancelled, when closing.
_READER_JOIN = 1.0


class _OpenFailed(grpc.RpcError):  # type: ignore[misc,unused-ignore]
    """The stream was not confirmed in time: the transport tries the next member (code UNKNOWN)."""


class _Stream:
    """One open watch stream and what its reader thread learned from it."""

    def __init__(self, call: Any, start_revision: int, changed: threading.Condition) -> None:
        self.call = call
        self.start_revision = start_revision  # every change from this revision on is reported
        self.member = ""  # the endpoint it runs on, once confirmed
        self.latest = 0  # the newest revision of a change seen
        self.created = False
        self.compacted = False  # the start revision is gone: the caller must read afresh
        self.error: str | None = None
        self.rpc_error: grpc.RpcError | None = None
        self._changed = changed
        self.reader = threading.Thread(target=self._read, name="dbfence-etcd-watch", daemon=True)

    @property
    def ended(self) -> bool:
        return self.error is not None

    def _read(self) -> None:
        try:
            for response in _responses(self.call):
                with self._changed:
                    if response.created:
                        self.created = True
                    if response.compact_revision:
                        self.compacted = True
                        self.latest = max(self.latest, int(response.header.revision))
                        self.error = f"watch start revision compacted (now {response.compact_revision})"
                    elif response.canceled:
                        self.error = f"watch canceled by etcd: {response.cancel_reason}"
                    elif response.events:
                        newest = max(int(event.kv.mod_revision) for event in response.events)
                        self.latest = max(self.latest, newest)
                    self._changed.notify_all()
                    if self.error is not None:
                        return
            self._end("watch stream ended", None)
        except grpc.RpcError as exc:
            code = exc.code().name if isinstance(exc, grpc.Call) else "UNKNOWN"
            detail = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            self._end(f"watch: {code} {detail}", exc)
        finally:
            self.call.cancel()

    def _end(self, error: str, rpc_error: grpc.RpcError | None) -> None:
        with self._changed:
            if self.error is None:
                self.error = error
                self.rpc_error = rpc_error
            self._changed.notify_all()

    def cancel(self) -> None:
        self.call.cancel()


class PrefixWatch:
    """Changes under one key prefix, reported as the newest revision seen."""

    def __init__(self, transport: EtcdTransport, prefix: bytes) -> None:
        self._transport = transport
        self._prefix = prefix
        self._changed = threading.Condition()
        self._open_lock = threading.Lock()  # one opener at a time
        self._stream: _Stream | None = None
        self.streams_opened = 0  # for tests and the footprint benchmark

    def wait(self, after_index: int, timeout: float, open_timeout: float) -> int:
        """A revision after ``after_index`` at which something changed, or ``after_index`` when
        ``timeout`` seconds passed without a change. Opening a stream takes at most
        ``open_timeout`` more. Raises DcsUnreachable, DcsAccessDenied."""
        wait_until = time.monotonic() + max(0.0, timeout)
        stream = self._stream_covering(after_index, open_timeout)
        with self._changed:
            while True:
                if stream.latest > after_index:
                    return stream.latest
                if stream.compacted:
                    return after_index + 1  # report a change: the caller reads a new snapshot
                if stream.ended:
                    self._forget(stream)
                    raise DcsUnreachable(stream.error or "watch ended", stream.member)
                left = wait_until - time.monotonic()
                if left <= 0:
                    return after_index
                self._changed.wait(left)

    def covers(self, after_index: int) -> bool:
        """Whether a confirmed stream already reports every change after ``after_index`` (for tests:
        a change made now wakes a waiter without opening anything)."""
        stream = self._stream
        return (stream is not None and stream.created and not stream.ended
                and stream.start_revision <= after_index + 1)

    def _stream_covering(self, after_index: int, open_timeout: float) -> _Stream:
        with self._open_lock:
            stream = self._stream
            if (stream is not None and not stream.ended and stream.start_revision <= after_index + 1
                    and stream.member == self._transport.current_endpoint):
                return stream
            if stream is not None:  # broken, too new for the caller, or on a member we left
                self._forget(stream)
            stream = self._open(after_index + 1, open_timeout)
            self._stream = stream
            return stream

    def _open(self, start_revision: int, open_timeout: float) -> _Stream:
        create = etcdrpc.WatchCreateRequest(key=self._prefix, range_end=range_end(self._prefix),
                                            start_revision=start_revision)

        def rpc(channel: grpc.Channel, call_timeout: float, md: Metadata) -> _Stream:
            call = etcdrpc.WatchStub(channel).Watch(
                iter([etcdrpc.WatchRequest(create_request=create)]),
                metadata=(*md, ("hasleader", "true")),
            )
            stream = _Stream(call, start_revision, self._changed)
            stream.reader.start()
            with self._changed:
                self._changed.wait_for(lambda: stream.created or stream.ended, call_timeout)
                if stream.created and (stream.compacted or not stream.ended):
                    return stream
            stream.cancel()
            if stream.rpc_error is not None:
                raise stream.rpc_error  # the transport decides: another member, or a clear error
            raise _OpenFailed(stream.error or f"watch not confirmed within {call_timeout:.2f} s")

        stream: _Stream = self._transport.call("watch", time.monotonic() + open_timeout, rpc)
        stream.member = self._transport.current_endpoint  # the member the call succeeded on
        self.streams_opened += 1
        return stream

    def _forget(self, stream: _Stream) -> None:
        stream.cancel()
        if self._stream is stream:
            self._stream = None

    def close(self) -> None:
        with self._open_lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.cancel()
            if stream.reader is not threading.current_thread():
                stream.reader.join(_READER_JOIN)


def _responses(call: Any) -> Iterator[Any]:
    yield from call
