"""Fixtures of the object-store tests: one moto S3 server per module with this process's AWS
variables pointing at it (short timeouts and retry budget) for the module, a fresh bucket per
test."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    pytest.importorskip("moto")
    from s3_server import MotoServer  # tests/ is on sys.path (tests/conftest.py)

    from catalog import fs

    server = MotoServer(tmp_path_factory.mktemp("moto"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        mp.setenv("EMOFORGE_S3_RETRY_SECONDS", "20")
        mp.setenv("EMOFORGE_S3_CONNECT_TIMEOUT", "1")
        mp.setenv("EMOFORGE_S3_REQUEST_TIMEOUT", "3")
        mp.setenv("EMOFORGE_LEASE_SETTLE_SECONDS", "0.1")
        mp.setenv("EMOFORGE_STAGING", str(tmp_path_factory.mktemp("staging")))
        fs._store.cache_clear()
        yield server
    fs._store.cache_clear()
    server.close()


@pytest.fixture
def s3(s3_server):
    """The server with a fresh bucket (`s3.bucket`)."""
    from catalog import fs

    fs._store.cache_clear()
    s3_server.bucket = s3_server.new_bucket()
    yield s3_server
    fs._store.cache_clear()
