"""Fixtures of the object-store tests: one moto S3 server per module, its AWS variables set for
each test (short timeouts and retry budget), a fresh bucket per test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    pytest.importorskip("moto")
    from s3_server import MotoServer  # tests/ is on sys.path (tests/conftest.py)

    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.close()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server, with this process's AWS variables pointing at it and a fresh bucket."""
    from catalog import fs

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EMOFORGE_S3_RETRY_SECONDS", "20")
    monkeypatch.setenv("EMOFORGE_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("EMOFORGE_S3_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("EMOFORGE_LEASE_SETTLE_SECONDS", "0.1")
    fs._store.cache_clear()
    s3_server.bucket = s3_server.new_bucket()
    yield s3_server
    fs._store.cache_clear()
