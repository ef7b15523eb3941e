"""GET /v1/backup: only with the API token, refusals say why, a broken copy never looks whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dbfence.discovery.backup_stream import BackupFetchError, fetch_backup
from dbfence.discovery.http_api import HttpApi, StatusBoard
from dbfence.discovery.metrics import Metrics

TOKEN = "s3cret"


def serve(source: object, token: str | None = TOKEN) -> HttpApi:
    return HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=token, backup=source).start()  # type: ignore[arg-type]


def url(api: HttpApi) -> str:
    host, port = api.address
    return f"http://{host}:{port}"


def whole() -> tuple[int, Iterator[bytes]]:
    return 3 << 20, iter([b"a" * (1 << 20), b"b" * (2 << 20)])


def broken() -> tuple[int, Iterator[bytes]]:
    def chunks() -> Iterator[bytes]:
        yield b"a" * 1000
        raise OSError("mariadb-backup --backup exited 1")
    return 5000, chunks()


def busy() -> tuple[int, Iterator[bytes]]:
    raise RuntimeError("a backup is already streaming from this donor")


def test_the_stream_arrives_whole_with_its_estimate() -> None:
    api = serve(whole)
    try:
        estimate, chunks = fetch_backup(url(api), TOKEN)
        assert estimate == 3 << 20
        assert b"".join(chunks) == b"a" * (1 << 20) + b"b" * (2 << 20)
    finally:
        api.stop()


@pytest.mark.parametrize(("token", "server_token", "answer"), [
    ("wrong", TOKEN, "answered 401"), ("", TOKEN, "answered 401"), (TOKEN, None, "answered 403")])
def test_without_the_token_nothing_is_streamed(token: str, server_token: str | None, answer: str) -> None:
    started: list[bool] = []

    def source() -> tuple[int, Iterator[bytes]]:
        started.append(True)
        return whole()

    api = serve(source, server_token)
    try:
        with pytest.raises(BackupFetchError, match=answer):
            fetch_backup(url(api), token)
        assert not started  # mariadb-backup never ran
    finally:
        api.stop()


def test_a_donor_that_cannot_copy_says_why() -> None:
    api = serve(busy)
    try:
        with pytest.raises(BackupFetchError, match="503: no backup from this node: a backup is already"):
            fetch_backup(url(api), TOKEN)
    finally:
        api.stop()


def test_a_copy_that_fails_midway_is_never_taken_for_a_whole_one() -> None:
    api = serve(broken)
    try:
        _, chunks = fetch_backup(url(api), TOKEN)
        with pytest.raises(BackupFetchError, match="broke off"):
            b"".join(chunks)
    finally:
        api.stop()


def test_no_backup_endpoint_unless_this_agent_may_be_a_donor() -> None:
    api = HttpApi("127.0.0.1", 0, StatusBoard(), Metrics(), token=TOKEN).start()
    try:
        with pytest.raises(BackupFetchError, match="answered 404"):
            fetch_backup(url(api), TOKEN)
    finally:
        api.stop()
