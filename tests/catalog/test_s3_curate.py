"""`emoforge curate` with inputs and catalog on an object store (moto's S3 server on loopback):
the store catalog equals a local run's over the same inputs, its face crops are uploaded and
decode from the store, validate / persons / split / report work there, and a store stopped
in the middle of a job makes the job retry, or stop with a clear error after which a re-run
finishes with exactly the catalog of a clean run."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pandas as pd
import pytest

import catalog
from catalog import fs, layout
from catalog.commits import read_commits
from catalog_compare import assert_same_catalog
from jobs import cli
from jobs.media.synthetic import make_video
from jobs.media.talking_face import astronaut_face

# one curate with the faces stage sets the module up (1.5-2 minutes on 2 cores): slow
pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _face_clip(path, shift: int) -> None:
    face = astronaut_face(160).image
    canvas = np.full((224, 224, 3), 40, np.uint8)
    canvas[32:192, 32:192] = face

    def frame(i: int) -> np.ndarray:
        return np.roll(canvas, int(shift * np.sin(i / 8)), axis=1)

    make_video(path, frame, 40, size=(224, 224))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, s3_server):
    folder = tmp_path_factory.mktemp("clips")
    _face_clip(folder / "a.mp4", 3)
    make_video(folder / "b.mp4", lambda i: np.full((64, 64, 3), (i * 7) % 255, np.uint8), 30)
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    for name in ("a.mp4", "b.mp4"):
        client.upload_file(str(folder / name), bucket, f"in/{name}")
    client.put_object(Bucket=bucket, Key="in/notes.txt", Body=b"not a video")
    return bucket, folder


CURATE = ["--stages", "ingest,scenes,faces", "--set", "runner.num_shards=4"]


@pytest.fixture(scope="module")
def curated(inputs, ray_local):
    """s3:// inputs (a prefix) curated into an s3:// catalog, persons pass included."""
    bucket, _ = inputs
    store = f"s3://{bucket}/catalog"
    assert cli.main(["curate", "--input", f"s3://{bucket}/in/", *CURATE, "--out", store]) == 0
    return store


def test_store_catalog_equals_the_local_run(inputs, curated, s3_server, tmp_path):
    bucket, _ = inputs
    store, local = curated, tmp_path / "catalog"
    assert cli.main(["curate", "--input", f"s3://{bucket}/in/", *CURATE, "--out", str(local)]) == 0
    assert_same_catalog(local, store)
    assert catalog.read_table(store, "persons").to_pylist() == catalog.read_table(local, "persons").to_pylist()


def test_store_catalog_is_valid_and_plain_readers_see_it(curated, s3_server):
    store = curated
    assert catalog.validate(store) == []
    videos = catalog.read_table(store, "videos").to_pylist()
    assert sorted(v["uri"].rsplit("/", 1)[-1] for v in videos) == ["a.mp4", "b.mp4"]
    assert all(v["ingest_status"] == "ok" for v in videos)
    tracks = catalog.read_table(store, "tracks").to_pylist()
    assert [t["faces_status"] for t in tracks].count("ok") == 1
    assert all(t["person_id"] for t in tracks if t["faces_status"] == "ok")  # persons pass ran
    assert catalog.read_table(store, "persons").num_rows == 1
    bucket = store.split("/")[2]
    plain = pd.read_parquet(f"{bucket}/catalog/tracks", filesystem=s3_server.filesystem())
    assert sorted(plain["track_id"]) == sorted(t["track_id"] for t in tracks)


def test_face_crops_are_uploaded_and_decode_from_the_store(curated):
    from pipeline.media import iter_frames

    root = fs.resolve(curated)
    assert not root.list_files(layout.STAGING)
    ok = [t for t in catalog.read_table(curated, "tracks").to_pylist() if t["faces_status"] == "ok"]
    record = list(read_commits(root).values())
    listed = {m for r in record for m in r.media}
    for track in ok:
        assert track["crop_path"] in listed and root.is_file(track["crop_path"])
        frames = [f.image for f in iter_frames(root.uri_of(track["crop_path"]))]
        assert len(frames) == track["frame_count"] and frames[0].shape == (256, 256, 3)


def test_training_windows_decode_from_the_store(curated, inputs, tmp_path):
    """The trainer's dataset over the store catalog: its track and the decoded window equal the
    frames of the committed crop (downloaded once into the media cache)."""
    from pipeline.media import iter_frames
    from training.data import DataConfig, WindowDataset

    selection = catalog.training_index(curated, catalog.Thresholds(
        require_lip_sync=False, min_speech_ratio=0.0, min_face_px_median=0.0))
    data = WindowDataset(curated, selection, DataConfig(size=64, frames=2, motion_frames=0),
                         split="all")
    assert len(data.tracks) == 1 and data.excluded == {}
    track = data.tracks[0]
    crop_path = [t for t in catalog.read_table(curated, "tracks").to_pylist()
                 if t["track_id"] == track.track_id][0]["crop_path"]
    first = next(iter(iter_frames(fs.resolve(curated).uri_of(crop_path)))).image
    local = next(iter(iter_frames(track.crop_path))).image
    assert np.array_equal(first, local)


def test_catalog_commands_on_the_store(curated, tmp_path, capsys):
    store = curated
    assert cli.main(["catalog", "validate", store]) == 0
    assert cli.main(["catalog", "stats", store]) == 0
    assert cli.main(["catalog", "split", store, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "train.txt").exists()
    index = catalog.training_index(store)
    assert index.num_rows <= catalog.read_table(store, "tracks").num_rows
    tracks = catalog.read_table(store, "tracks")
    assert catalog.to_ray_dataset(store, "tracks").count() == tracks.num_rows
    assert cli.main(["catalog", "report", store]) == 0  # uploaded next to the catalog
    page = fs.resolve(store).read_bytes("report.html").decode()
    assert page.count("data:image/jpeg") >= 1  # a contact sheet decoded from the store's crop
    assert "face crop missing" not in page
    capsys.readouterr()


def _curate_with_outage(bucket: str, folder, out: str, server, pause_s: float) -> int:
    """Curate with the store stopped for `pause_s` once the first shard is committed."""
    root = fs.resolve(out)
    stop = threading.Event()

    def saboteur() -> None:
        while not stop.is_set():
            try:
                if root.list_files(layout.COMMITS):
                    break
            except Exception:  # noqa: BLE001 - polling only
                pass
            time.sleep(0.05)
        else:
            return
        server.pause()
        time.sleep(pause_s)
        server.resume()

    thread = threading.Thread(target=saboteur, daemon=True)
    thread.start()
    try:
        return cli.main(["curate", "--input", str(folder / "a.mp4"), str(folder / "b.mp4"),
                         "--out", out, "--stages", "ingest,scenes", "--set", "runner.num_shards=4",
                         "--set", "runner.wave_videos=1"])
    finally:
        stop.set()
        thread.join()
        server.resume()


def test_a_store_outage_mid_job(inputs, tmp_path, s3_server, monkeypatch, capsys, caplog,
                                ray_local):
    bucket, folder = inputs
    args = ["--input", str(folder / "a.mp4"), str(folder / "b.mp4"), "--stages", "ingest,scenes",
            "--set", "runner.num_shards=4", "--set", "runner.wave_videos=1"]
    clean = tmp_path / "clean"
    assert cli.main(["curate", *args, "--out", str(clean)]) == 0
    # short: the job retries through it and finishes
    short = f"s3://{bucket}/outage-short"
    with caplog.at_level(logging.WARNING, logger="catalog.fs"):
        assert _curate_with_outage(bucket, folder, short, s3_server, pause_s=4) == 0
    assert "store unreachable (attempt 1), retrying" in caplog.text  # the outage hit the job
    assert_same_catalog(clean, short)
    assert catalog.validate(short) == []
    # long: past the retry budget the job stops with a clear error; a re-run finishes the catalog
    monkeypatch.setenv("EMOFORGE_S3_RETRY_SECONDS", "3")
    long = f"s3://{bucket}/outage-long"
    capsys.readouterr()
    assert _curate_with_outage(bucket, folder, long, s3_server, pause_s=12) == 1
    err = capsys.readouterr().err
    assert "object store unreachable" in err and "run the same command again" in err
    monkeypatch.setenv("EMOFORGE_S3_RETRY_SECONDS", "20")
    assert cli.main(["curate", *args, "--out", long]) == 0
    assert_same_catalog(clean, long)
    assert catalog.validate(long) == []
