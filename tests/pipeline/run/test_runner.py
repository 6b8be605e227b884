"""The runner's contract: resume after SIGKILL and after a crash between file moves and the
commit record, poison inputs, stage fingerprints and --recompute, duplicates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from catalog_compare import assert_same_catalog
from driver_kill import kill_after_first_commit
from jobs.media.synthetic import make_video

import catalog
import pipeline.run.staging as staging_module
from pipeline.run import inputs, runner
from pipeline.run.plan import FingerprintError, chains
from pipeline.stages.contract import StageContext
from pipeline.stages.registry import load_stage_class
from pipeline.stages.ingest.stage import IngestConfig

pytestmark = pytest.mark.ray
ROOT = Path(__file__).resolve().parents[3]


def _inputs(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"v{i:02d}.mp4"
        if not path.exists():
            make_video(path, lambda k, i=i: np.full((32, 32, 3), (i * 20 + k) % 255, np.uint8), 5, size=(32, 32))
        files.append(str(path))
    return files


def test_crash_between_moves_and_commit_record(tmp_path, ray_local, monkeypatch):
    files = _inputs(tmp_path / "in", 4)
    cfg = runner.RunnerConfig(wave_videos=1)
    reference = tmp_path / "reference"
    runner.run_stages(files, str(reference), ["ingest"], {}, cfg)

    original = staging_module.commit_shard
    calls = {"n": 0}

    def crashing_commit(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second shard: files moved, then the process "dies"
            kwargs["before_record"] = lambda: (_ for _ in ()).throw(RuntimeError("power cut"))
        return original(*args, **kwargs)

    monkeypatch.setattr(staging_module, "commit_shard", crashing_commit)
    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="power cut"):
        runner.run_stages(files, str(out), ["ingest"], {}, cfg)
    committed = len(list((out / "_commits").glob("*.json")))
    assert committed == 1
    assert len(list((out / "videos").glob("*.parquet"))) == 2  # one orphan file left behind
    monkeypatch.setattr(staging_module, "commit_shard", original)
    runner.run_stages(files, str(out), ["ingest"], {}, cfg)
    assert_same_catalog(out, reference)
    assert catalog.validate(out) == []


def test_poison_input_fails_after_retries_and_job_finishes(tmp_path, ray_local):
    files = _inputs(tmp_path / "in", 2)
    poison = tmp_path / "in" / "poison.mp4"
    make_video(poison, lambda k: np.zeros((32, 32, 3), np.uint8), 5, size=(32, 32))
    out = tmp_path / "cat"
    cfg = runner.RunnerConfig(max_attempts=3)
    runner.run_stages([*files, str(poison)], str(out), ["crashing_stage:CrashingIngest"], {}, cfg)
    rows = {Path(r["uri"]).name: r for r in catalog.read_table(out, "videos").to_pylist()}
    assert rows["poison.mp4"]["ingest_status"] == "failed"
    assert "worker crashed while decoding" in rows["poison.mp4"]["ingest_error"]
    assert "3 attempts" in rows["poison.mp4"]["ingest_error"]
    assert all(rows[Path(f).name]["ingest_status"] == "ok" for f in files)


def test_changed_config_is_refused_then_recomputed(tmp_path, ray_local):
    files = _inputs(tmp_path / "in", 2)
    out = tmp_path / "cat"
    runner.run_stages(files, str(out), ["ingest"], {"ingest": IngestConfig()})
    before = catalog.read_manifest(out)["stages"]["ingest"]["fingerprint"]
    changed = {"ingest": IngestConfig(vfr_tolerance=0.25)}
    with pytest.raises(FingerprintError, match="--recompute ingest"):
        runner.run_stages(files, str(out), ["ingest"], changed)
    result = runner.run_stages(files, str(out), ["ingest"], changed, recompute={"ingest"})
    assert result.shards_committed == 2
    manifest = catalog.read_manifest(out)
    assert manifest["stages"]["ingest"]["fingerprint"] != before
    assert manifest["stages"]["ingest"]["config"]["vfr_tolerance"] == 0.25
    seqs = sorted(p.name for p in (out / "_commits").glob("*.json"))
    assert any(name.endswith("-0001.json") for name in seqs)
    assert catalog.validate(out) == []
    # a same-config re-run is a no-op
    assert runner.run_stages(files, str(out), ["ingest"], changed).shards_committed == 0


def test_second_writer_is_refused(tmp_path):
    from catalog.commits import Lease, LeaseError

    with Lease(tmp_path):
        with pytest.raises(LeaseError, match="one writer per catalog"):
            with Lease(tmp_path):
                pass


def _check_run(cmd: list[str], env: dict) -> None:
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_same_catalog(tmp_path):
    """Driver attached to a Ray the test starts (a holder process), killed with SIGKILL after its
    first shard commit, then re-run: the catalog equals an uninterrupted run's."""
    files = _inputs(tmp_path / "in", 6)
    # the test's own throwaway cluster: no token auth, so the drivers can attach to it
    env = {**os.environ, "EMOFORGE_PROGRESS": "0", "RAY_AUTH_MODE": "disabled"}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import ray, sys, time; ray.init(num_cpus=2, include_dashboard=False); "
         "print(ray.get_runtime_context().gcs_address, flush=True); time.sleep(3600)"],
        stdout=subprocess.PIPE, text=True, env=env)
    try:
        address = holder.stdout.readline().strip()
        assert address, "the Ray holder did not start"
        cmd = [sys.executable, "-m", "jobs.cli", "curate", "--input", *files, "--stages", "ingest",
               "--ray-address", address, "--set", "runner.wave_videos=1"]
        reference = tmp_path / "reference"
        _check_run([*cmd, "--out", str(reference)], env)
        out = tmp_path / "killed"
        commits = kill_after_first_commit([*cmd, "--out", str(out)], out, env)
        assert 1 <= commits < 6
        _check_run([*cmd, "--out", str(out)], env)
        assert_same_catalog(out, reference)
        assert catalog.validate(out) == []
        manifest = json.loads((out / "_manifest.json").read_text())
        assert manifest["rows"]["videos"] == 6
    finally:
        holder.send_signal(signal.SIGINT)
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()


def test_ingest_and_scenes_run_as_one_chain():
    from jobs.spec import build

    spec = build({"job": {"inputs": ["x"]}})
    context = StageContext(catalog="/tmp/x", staging="/tmp/x/_staging/r")
    stages = [load_stage_class(n)(spec.configs[n], context) for n in spec.stages]
    assert chains(stages) == [[0, 1], [2], [3]]


def test_crash_in_a_chained_stage_is_blamed_on_that_stage(tmp_path, ray_local):
    (tmp_path / "in").mkdir()
    good, poison = tmp_path / "in" / "v00.mp4", tmp_path / "in" / "poison.mp4"
    for shade, path in enumerate((good, poison)):  # 1 s: longer than the minimum scene length
        make_video(path, lambda k, shade=shade: np.full((32, 32, 3), 3 * k + 90 * shade, np.uint8), 25, size=(32, 32))
    out = tmp_path / "cat"
    runner.run_stages([str(good), str(poison)], str(out), ["ingest", "crashing_stage:CrashingScenes"], {})
    rows = {Path(r["uri"]).name: r for r in catalog.read_table(out, "videos").to_pylist()}
    assert rows["poison.mp4"]["ingest_status"] == "ok"
    assert rows["poison.mp4"]["scenes_status"] == "failed"
    assert "worker crashed while decoding" in rows["poison.mp4"]["scenes_error"]
    assert rows["v00.mp4"]["scenes_status"] == "ok"
    assert catalog.read_table(out, "clips").num_rows >= 1
    assert catalog.validate(out) == []


def test_inputs_hashed_in_the_driver_or_as_ray_tasks(tmp_path, ray_local, monkeypatch):
    """Small inputs are hashed by the driver, big ones by Ray tasks: the same sha256 of the
    bytes either way."""
    import hashlib

    from catalog import fs

    files = _inputs(tmp_path / "in", 3)
    truth = {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files}
    by_driver = inputs.hash_inputs(fs.resolve(tmp_path / "a"), files)
    monkeypatch.setattr(inputs, "DRIVER_HASH_BYTES", 0)  # every input "too big" for the driver
    by_tasks = inputs.hash_inputs(fs.resolve(tmp_path / "b"), files)
    for rows in (by_driver, by_tasks):
        assert {r["uri"]: r["content_sha256"] for r in rows} == truth
