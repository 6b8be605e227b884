"""The dataset over an object-store catalog (moto's S3 server on loopback): the index is built
from the store's tables and a window reads its frame rows and clip from the store."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from jobs.media.synthetic_catalog import write_training_catalog
from training.data import DataConfig, Window, WindowDataset

CFG = DataConfig(size=64, frames=4, motion_frames=2, reference_margin_frames=25)


@pytest.fixture
def store(tmp_path, monkeypatch):
    pytest.importorskip("moto")
    from s3_server import MotoServer  # tests/ is on sys.path (tests/conftest.py)

    from catalog import fs

    (tmp_path / "moto").mkdir()
    server = MotoServer(tmp_path / "moto")
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EMOFORGE_STAGING", str(tmp_path / "staging"))
    monkeypatch.setenv("EMOFORGE_CACHE", str(tmp_path / "cache"))
    fs._store.cache_clear()
    yield f"s3://{server.new_bucket()}/catalog"
    fs._store.cache_clear()
    server.close()


def test_windows_of_a_store_catalog_equal_the_local_ones(store, tmp_path):
    """The same synthetic catalog written to the store and to a folder: the same tracks,
    windows and samples (frame rows read from the store's Parquet, clips downloaded once)."""
    ids = write_training_catalog(store, 4, seconds=4.0, tracks_per_shard=3)
    assert write_training_catalog(tmp_path / "local", 4, seconds=4.0, tracks_per_shard=3) == ids
    remote = WindowDataset(store, pa.table({"track_id": ids}), CFG, split="all")
    local = WindowDataset(tmp_path / "local", pa.table({"track_id": ids}), CFG, split="all")
    assert remote.tracks[0].crop_path.startswith(store)
    assert [t.length for t in remote.tracks] == [t.length for t in local.tracks]
    assert np.array_equal(remote.windows(0), local.windows(0))
    for row in remote.windows(0)[:3]:
        window = Window(*(int(v) for v in row))
        a, b = remote[window], local[window]
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert remote.decode_failures == {}
