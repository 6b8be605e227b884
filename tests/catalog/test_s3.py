"""Catalogs on an object store (a real S3 server, moto's, on loopback): the same catalog written
locally and uploaded reads the same through emoforge, plain pandas and pyarrow; validate, stats,
select and training_index work there; the commit protocol, orphan clean-up and the lease work
without renames; wrong credentials and a missing bucket are clear configuration errors."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

import catalog
from catalog import fs, layout
from catalog.commits import Lease, LeaseError, clean_orphans, commit_shard, read_commits
from catalog_compare import assert_same_catalog
from jobs.media.synthetic_catalog import generate_catalog


def upload(local, s3, prefix: str) -> str:
    """Copy a local catalog folder to s3://<bucket>/<prefix> with plain pyarrow."""
    pafs.copy_files(str(local), f"{s3.bucket}/{prefix}", source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=s3.filesystem())
    return f"s3://{s3.bucket}/{prefix}"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "local"
    generate_catalog(root, n_videos=6, shards=2, crops="per_track", crop_px=64, max_track_s=1.0)
    return root


def test_a_store_catalog_reads_like_the_local_one(synthetic, s3):
    uri = upload(synthetic, s3, "corpus")
    assert_same_catalog(synthetic, uri)
    assert catalog.validate(uri) == []
    assert catalog.stats(uri) == catalog.stats(synthetic)
    assert catalog.describe(uri)["tables"]["tracks"]["rows"] == catalog.read_table(synthetic, "tracks").num_rows
    local_sel, store_sel = catalog.select(synthetic), catalog.select(uri)
    assert store_sel.to_pylist() == local_sel.to_pylist()
    assert catalog.training_index(uri).to_pylist() == catalog.training_index(synthetic).to_pylist()
    con = catalog.to_duckdb(uri)
    assert con.execute("SELECT count(*) FROM tracks").fetchone()[0] == store_sel.num_rows


def test_plain_pandas_and_pyarrow_read_the_store_catalog(synthetic, s3):
    uri = upload(synthetic, s3, "plain")
    expected = catalog.read_table(synthetic, "tracks").sort_by("track_id")
    plain = pd.read_parquet(f"{s3.bucket}/plain/tracks", filesystem=s3.filesystem())
    assert sorted(plain["track_id"]) == expected["track_id"].to_pylist()
    assert set(expected.column_names) <= set(plain.columns)
    table = ds.dataset(f"{s3.bucket}/plain/tracks", filesystem=s3.filesystem(), format="parquet").to_table()
    assert sorted(table["track_id"].to_pylist()) == expected["track_id"].to_pylist()
    frames = pd.read_parquet(f"{s3.bucket}/plain/videos", filesystem=s3.filesystem())
    assert len(frames) == catalog.read_table(uri, "videos").num_rows


def test_commit_writes_final_names_then_the_record_and_orphans_are_cleaned(synthetic, s3):
    uri = upload(synthetic, s3, "commit")
    root = fs.resolve(uri)
    before = catalog.read_table(uri, "tracks")
    shard = min(read_commits(root))
    tracks = catalog.read_table(uri, "tracks", shards={shard})
    media = tracks.filter(tracks["crop_path"].is_valid())["crop_path"].to_pylist()
    assert media and all(root.is_file(m) for m in media)

    def crash():
        raise RuntimeError("killed between the files and the record")

    with pytest.raises(RuntimeError, match="killed"):
        commit_shard(root, shard, {"tracks": tracks}, {}, {"faces": "y"}, keep_media=media,
                     before_record=crash)
    orphan = layout.shard_file("tracks", shard, read_commits(root)[shard].seq + 1)
    assert root.is_file(orphan)  # written to its final name, but no record lists it
    assert catalog.read_table(uri, "tracks").to_pylist() == before.to_pylist()
    assert any("tracks/" in p for p in catalog.validate(uri)) is False
    assert clean_orphans(root) == [orphan]
    record = commit_shard(root, shard, {"tracks": tracks}, {}, {"faces": "y"}, keep_media=media)
    assert record.files["tracks"] == [orphan]  # the same deterministic name, now committed
    assert not root.is_file(layout.shard_file("tracks", shard, record.seq - 1))  # old version gone
    assert all(root.is_file(m) for m in media)
    assert catalog.read_table(uri, "tracks").to_pylist() == before.to_pylist()


def test_staged_media_are_uploaded_to_their_final_names(s3, tmp_path):
    uri = f"s3://{s3.bucket}/media"
    staged = tmp_path / "crop.mp4"
    payload = bytes(range(256)) * 4000  # 1 MB: more than one ranged read is not needed here
    staged.write_bytes(payload)
    rel = "media/00003/t1/crop.mp4"
    record = commit_shard(uri, 3, {}, {rel: staged}, {"faces": "x"})
    assert record.media == [rel] and not staged.exists()  # moved: the staged copy is gone
    body = s3.client().get_object(Bucket=s3.bucket, Key=f"media/{rel}")["Body"].read()
    assert body == payload
    assert fs.resolve(uri).read_json(layout.commit_file(3, 0))["media"] == [rel]


def test_one_writer_per_store_catalog(s3, monkeypatch):
    uri = f"s3://{s3.bucket}/leased"
    with Lease(uri):
        with pytest.raises(LeaseError, match="one writer per catalog"):
            with Lease(uri):
                pass
        holder = fs.resolve(uri).read_json(layout.LEASE)
        assert holder["expires_at"] > holder["since"]
    assert not fs.resolve(uri).is_file(layout.LEASE)
    # a lease left by a writer on another host is honoured until it expires, then taken over
    root = fs.resolve(uri)
    root.write_json(layout.LEASE, {"host": "elsewhere", "pid": 1, "token": "x", "since": 0,
                                   "expires_at": 4e9})
    with pytest.raises(LeaseError, match="pid 1 on elsewhere"):
        with Lease(uri):
            pass
    root.write_json(layout.LEASE, {"host": "elsewhere", "pid": 1, "token": "x", "since": 0,
                                   "expires_at": 1.0})
    with Lease(uri) as lease:
        assert root.read_json(layout.LEASE)["token"] == lease.token


def test_wrong_credentials_and_missing_bucket_are_configuration_errors(synthetic, s3, monkeypatch,
                                                                       capsys, tmp_path):
    from jobs import cli

    uri = upload(synthetic, s3, "access")
    with pytest.raises(fs.StoreAccessError, match="does not exist"):
        fs.resolve("s3://no-such-bucket/x").check_access(create=True)
    assert cli.main(["catalog", "stats", "s3://no-such-bucket/x"]) == 2
    capsys.readouterr()
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"never read")
    # curate refuses before any work: no lease, no Ray, nothing written
    assert cli.main(["curate", "--input", str(clip), "--out", "s3://no-such-bucket/x"]) == 2
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    fs._store.cache_clear()
    with pytest.raises(fs.StoreAccessError, match="refused access"):
        catalog.read_table(uri, "tracks")
    assert cli.main(["catalog", "validate", uri]) == 2
    err = capsys.readouterr().err
    assert "refused access" in err and "AWS_SECRET_ACCESS_KEY" in err
    fresh = f"s3://{s3.bucket}/fresh"
    assert cli.main(["curate", "--input", str(clip), "--out", fresh]) == 2
    assert "refused access" in capsys.readouterr().err
    assert s3.client().list_objects_v2(Bucket=s3.bucket, Prefix="fresh/")["KeyCount"] == 0


def test_an_unreachable_store_is_retried_then_a_clear_error(s3, monkeypatch):
    uri = f"s3://{s3.bucket}/down"
    fs.resolve(uri).write_json("x.json", {"a": 1})
    monkeypatch.setenv("EMOFORGE_S3_RETRY_SECONDS", "3")
    s3.pause()
    try:
        with pytest.raises(fs.StoreUnavailableError, match="unreachable .* run the same command"):
            fs.resolve(uri).read_json("x.json")
    finally:
        s3.resume()
    assert fs.resolve(uri).read_json("x.json") == {"a": 1}


def test_s3_inputs_open_through_the_store(s3, tmp_path):
    from jobs.media.synthetic import make_video
    from pipeline.stages.ingest import hashing
    from pipeline.media import iter_frames

    import numpy as np

    local = tmp_path / "clip.mp4"
    make_video(local, lambda i: np.full((64, 64, 3), i * 5 % 255, np.uint8), 20)
    s3.client().upload_file(str(local), s3.bucket, "in/clip.mp4")
    uri = f"s3://{s3.bucket}/in/clip.mp4"
    remote = [f.image for f in iter_frames(uri)]
    here = [f.image for f in iter_frames(str(local))]
    assert len(remote) == len(here) == 20
    assert all((a == b).all() for a, b in zip(remote, here))
    row, ref = hashing.hash_file(uri), hashing.hash_file(str(local))
    assert row["content_sha256"] == ref["content_sha256"] and row["size_bytes"] == ref["size_bytes"]
    assert hashing.hash_file(f"s3://{s3.bucket}/in/missing.mp4")["hash_error"].endswith("no such object")


def test_the_frozen_old_catalog_migrates_forward_on_the_store(s3, tmp_path):
    from pathlib import Path

    from catalog.migrate import SchemaVersionError

    uri = upload(Path(__file__).parent.parent / "data" / "catalog_v0", s3, "old")
    with pytest.raises(SchemaVersionError, match="catalog migrate"):
        catalog.read_table(uri, "videos")
    assert catalog.migrate(uri) == ["0.x -> 1.x"]
    assert catalog.validate(uri) == []
    videos = {r["video_id"][0]: r for r in catalog.read_table(uri, "videos").to_pylist()}
    assert videos["a"]["uri"] == "/data/a.mp4" and videos["b"]["duration_s"] == pytest.approx(61.0)


def test_a_job_specs_storage_section_reaches_the_store(s3, monkeypatch):
    from jobs import spec as specs

    for key in fs.STORAGE_KEYS.values():  # restored after the test: configure() sets them
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, "unset")
            monkeypatch.delenv(key)
        else:
            monkeypatch.setenv(key, os.environ[key])
    monkeypatch.setenv("EMOFORGE_S3_RETRY_SECONDS", "1")
    fs._store.cache_clear()
    with pytest.raises((fs.RootError, fs.StoreUnavailableError)):  # AWS itself, not this server
        fs.resolve(f"s3://{s3.bucket}/x").check_access()
    storage = {"endpoint_url": s3.url, "region": "us-east-1", "access_key": s3.access_key,
               "secret_key": s3.secret_key, "retry_seconds": 5}
    specs.build({"job": {"inputs": ["a.mp4"], "out": f"s3://{s3.bucket}/x"}, "storage": storage})
    fs.resolve(f"s3://{s3.bucket}/x").check_access(create=True)
    with pytest.raises(specs.SpecError, match="valid: .*endpoint_url"):
        specs.build({"job": {}, "storage": {"endpoint": "x"}})


def test_a_store_outage_while_decoding_stops_the_job_not_the_row(s3, tmp_path, monkeypatch):
    """Ingest swallows decode errors as failed rows; one caused by the store must not be
    recorded (a re-run would skip the row as done): the worker raises instead."""
    import numpy as np
    import pyarrow as pa

    from jobs.media.synthetic import make_video
    from pipeline.run.workers import StageWorker
    from pipeline.stages.contract import StageContext
    from pipeline.stages.ingest.stage import IngestConfig

    local = tmp_path / "clip.mp4"
    make_video(local, lambda i: np.full((64, 64, 3), i * 9 % 255, np.uint8), 10)
    s3.client().upload_file(str(local), s3.bucket, "in/clip.mp4")
    row = {"video_id": "v", "uri": f"s3://{s3.bucket}/in/clip.mp4", "shard": 0,
           "content_sha256": "x", "size_bytes": local.stat().st_size, "mtime_ns": 1,
           "duplicate_of": None, "hash_error": None}
    context = StageContext(catalog=f"s3://{s3.bucket}/cat", staging=str(tmp_path / "staging"))
    worker = StageWorker(["ingest"], [IngestConfig()], context, max_attempts=3)
    monkeypatch.setenv("EMOFORGE_S3_RETRY_SECONDS", "1")
    s3.pause()
    try:
        with pytest.raises(fs.StoreUnavailableError, match="not recorded as the row's failure"):
            worker(pa.Table.from_pylist([row]))
    finally:
        s3.resume()
    from pipeline.run.workers import unpack

    packed = worker(pa.Table.from_pylist([row])).to_pylist()[0]  # the store is back: a real row
    assert unpack(packed["ipc"]).to_pylist()[0]["ingest_status"] == "ok"


def test_store_lease_race_has_one_winner_and_renews(s3, monkeypatch):
    import threading
    import time

    uri = f"s3://{s3.bucket}/race"
    monkeypatch.setenv("EMOFORGE_LEASE_SETTLE_SECONDS", "1.0")
    monkeypatch.setenv("EMOFORGE_LEASE_SECONDS", "1.5")  # renewed every 0.5 s
    outcomes: list = []
    leases = [Lease(uri) for _ in range(2)]
    barrier = threading.Barrier(2)

    def take(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.__enter__()
            outcomes.append("held")
        except LeaseError:
            outcomes.append("refused")

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held", "refused"]
    winner = next(lease for lease in leases if lease.held)
    first = fs.resolve(uri).read_json(layout.LEASE)
    assert first["token"] == winner.token
    time.sleep(2.0)  # past the first expiry: the renewals keep it ahead
    renewed = fs.resolve(uri).read_json(layout.LEASE)
    assert renewed["token"] == winner.token and renewed["expires_at"] > first["expires_at"]
    assert renewed["expires_at"] > time.time()
    winner.__exit__(None, None, None)
    assert not fs.resolve(uri).is_file(layout.LEASE)


def test_media_file_gives_a_local_copy_of_store_media(synthetic, s3, tmp_path):
    uri = upload(synthetic, s3, "mediafile")
    crop = next(t["crop_path"] for t in catalog.read_table(uri, "tracks").to_pylist() if t["crop_path"])
    assert catalog.media_file(synthetic, crop) == synthetic.resolve() / crop  # local: the file itself
    copy = catalog.media_file(uri, crop, cache=tmp_path / "cache")
    assert copy.read_bytes() == (synthetic / crop).read_bytes()
    fetched = copy.stat().st_mtime_ns
    assert catalog.media_file(uri, crop, cache=tmp_path / "cache") == copy
    assert copy.stat().st_mtime_ns == fetched  # fetched once
    with pytest.raises(FileNotFoundError, match="no such media file"):
        catalog.media_file(uri, "media/00000/none/crop.mp4", cache=tmp_path / "cache")
