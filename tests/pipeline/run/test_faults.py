"""Faults on a multi-node Ray cluster on one machine (ray.cluster_utils.Cluster: a head without
CPUs and two 1-CPU worker nodes, in a temporary Ray folder): a worker node removed mid-job, the
driver killed and the job re-run, a task that raises once, a file that kills its decoder. Each
ends with every input accounted for and the rows of a clean run (timing columns excepted)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from catalog_compare import assert_same_catalog, catalog_rows
from driver_kill import kill_after_first_commit
from jobs.media.synthetic import make_video

import catalog
from pipeline.run import runner

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.own_cluster]
ROOT = Path(__file__).resolve().parents[3]
TESTS = ROOT / "tests"
STAGES = ["fault_stages:SlowIngest", "scenes"]


@pytest.fixture(scope="module")
def cluster():
    """Head (0 CPUs: the driver's node) + two 1-CPU worker nodes, Ray files under a fresh short
    temporary folder; everything it starts is stopped at the end, and a session's local Ray
    (tests/conftest.py ray_local) is restored as it was."""
    import ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    if had_local:
        ray.shutdown()
    ray_dir = tempfile.mkdtemp(prefix="efc", dir="/tmp")  # short: Ray's socket paths are limited
    faults = Path(ray_dir) / "faults"
    (Path(ray_dir) / "ray").mkdir()  # Ray writes the cluster's address under $RAY_TMPDIR/ray
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "PYTHONPATH", "EMOFORGE_TEST_FAULTS",
                                            "RAY_AUTH_MODE", "EMOFORGE_PROGRESS")}
    os.environ.update(RAY_TMPDIR=ray_dir, EMOFORGE_TEST_FAULTS=str(faults), RAY_AUTH_MODE="disabled",
                      EMOFORGE_PROGRESS="0",
                      PYTHONPATH=os.pathsep.join(p for p in (str(TESTS), saved["PYTHONPATH"]) if p))
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": ray_dir})
        workers = [c.add_node(num_cpus=1) for _ in range(2)]
        c.wait_for_nodes()
        ray.init(address=c.address, log_to_driver=False)
        yield c, workers
    finally:
        ray.shutdown()
        if c is not None:
            c.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(ray_dir, ignore_errors=True)
        if had_local:
            path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})


def _inputs(folder: Path, n: int, poison: bool = False) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):  # 1 s each: longer than the minimum scene
        path = folder / f"v{i:02d}.mp4"
        make_video(path, lambda k, i=i: np.full((32, 32, 3), (i * 37 + 3 * k) % 255, np.uint8), 25, size=(32, 32))
        files.append(str(path))
    if poison:
        path = folder / "poison.mp4"
        make_video(path, lambda k: np.full((32, 32, 3), 200, np.uint8), 25, size=(32, 32))
        files.append(str(path))
    return files


def _reference(tmp_path: Path, files: list[str]) -> Path:
    out = tmp_path / "reference"
    runner.run_stages(files, str(out), ["ingest", "scenes"], {}, runner.RunnerConfig())
    return out


def _accounted(out: Path, files: list[str]) -> dict[str, dict]:
    rows = {r["uri"]: r for r in catalog.read_table(out, "videos").to_pylist()}
    assert sorted(rows) == sorted(os.path.abspath(f) for f in files)  # every input, once
    assert catalog.validate(out) == []
    return rows


def test_worker_node_removed_mid_job(cluster, tmp_path):
    import ray

    c, workers = cluster
    files = _inputs(tmp_path / "in", 6)
    reference = _reference(tmp_path, files)
    out = tmp_path / "cat"
    victim = workers[0]
    from fault_stages import marker_dir

    marks = marker_dir(str(out))
    stop, removed = threading.Event(), threading.Event()

    def remove_when_busy() -> None:  # remove the node while it is inside a row
        while not stop.is_set():
            if any(marks.glob(f"started-{victim.node_id}-*")):
                c.remove_node(victim)
                removed.set()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=remove_when_busy, daemon=True)
    watcher.start()
    try:
        runner.run_stages(files, str(out), STAGES, {}, runner.RunnerConfig(wave_videos=2))
    finally:
        stop.set()
        watcher.join(timeout=60)
        if removed.is_set():  # the next tests get two worker nodes again
            workers[0] = c.add_node(num_cpus=1)
            c.wait_for_nodes()
    assert removed.is_set(), "the node was never busy"
    assert victim.node_id not in {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    rows = _accounted(out, files)
    assert all(r["ingest_status"] == "ok" and r["scenes_status"] == "ok" for r in rows.values())
    assert_same_catalog(out, reference)


def test_driver_killed_then_rerun(cluster, tmp_path):
    c, _ = cluster
    files = _inputs(tmp_path / "in", 6)
    reference = _reference(tmp_path, files)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jobs.cli", "curate", "--input", *files, "--out", str(out),
           "--stages", "ingest,scenes", "--ray-address", c.address, "--set",
           "runner.wave_videos=1", "--no-persons"]
    assert 1 <= kill_after_first_commit(cmd, out, os.environ.copy()) < 6
    done = subprocess.run(cmd, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    _accounted(out, files)
    assert_same_catalog(out, reference)


def test_task_raising_once_is_retried(cluster, tmp_path):
    files = _inputs(tmp_path / "in", 3)
    reference = _reference(tmp_path, files)
    out = tmp_path / "cat"
    runner.run_stages(files, str(out), ["fault_stages:FlakySetupIngest", "scenes"], {}, runner.RunnerConfig())
    from fault_stages import marker_dir

    assert (marker_dir(str(out)) / "setup-failed-once").exists()  # it did raise, once
    rows = _accounted(out, files)
    assert all(r["ingest_status"] == "ok" for r in rows.values())
    assert_same_catalog(out, reference)


def test_file_that_kills_its_decoder(cluster, tmp_path):
    files = _inputs(tmp_path / "in", 3, poison=True)
    out = tmp_path / "cat"
    runner.run_stages(files, str(out), ["crashing_stage:CrashingIngest", "scenes"], {}, runner.RunnerConfig())
    rows = _accounted(out, files)
    poison = rows[os.path.abspath(files[-1])]
    assert poison["ingest_status"] == "failed"
    assert "worker crashed while decoding (3 attempts)" in poison["ingest_error"]
    assert poison["scenes_status"] == "skipped"
    # the other inputs: the rows of a clean run without the poison file
    clean = _reference(tmp_path, files[:-1])
    mine = catalog_rows(out)
    mine["videos"] = [r for r in mine["videos"] if r["uri"] != poison["uri"]]
    assert mine == catalog_rows(clean)


@pytest.mark.parametrize("model_workers", ["tasks", "actors"])
def test_gpu_stage_runs_on_the_gpu_node(cluster, tmp_path, model_workers):
    """`[runner.stage_resources]` with `num_gpus`: refused with a clear error on a cluster without
    GPUs; with a (logical) 1-GPU node added, the stage's workers (reused task workers or an
    actor pool) run there, each holding GPU 0, and the catalog equals a CPU run's."""
    c, _ = cluster
    files = _inputs(tmp_path / "in", 3)
    reference = _reference(tmp_path, files)
    stages = ["fault_stages:GpuIngest", "scenes"]
    config = runner.RunnerConfig(stage_resources={"ingest": {"num_gpus": 1, "num_cpus": 1}},
                                 model_workers=model_workers)
    with pytest.raises(ValueError, match="asks for GPUs; the Ray cluster has none"):
        runner.run_stages(files, str(tmp_path / "refused"), stages, {}, config)
    gpu_node = c.add_node(num_cpus=1, num_gpus=1)
    try:
        c.wait_for_nodes()
        gpu_id = gpu_node.node_id
        out = tmp_path / "cat"
        runner.run_stages(files, str(out), stages, {}, config)
        from fault_stages import marker_dir

        marks = sorted(p.name for p in marker_dir(str(out)).glob("gpu-*"))
        assert marks == sorted(f"gpu-{gpu_id}-0-{Path(f).name}" for f in files)
        rows = _accounted(out, files)
        assert all(r["ingest_status"] == "ok" for r in rows.values())
        assert_same_catalog(out, reference)
    finally:
        c.remove_node(gpu_node)
