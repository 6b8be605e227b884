"""A curate job on a real two-node Ray cluster started with `ray start` on 127.0.0.1 (a head and a
worker node, 1 CPU each, from the test's own temporary Ray folder): run with `emoforge curate
--ray-address`, with RAY_ADDRESS set (what a `ray job submit` driver sees), and submitted with
`ray job submit --working-dir . -- emoforge curate JOB.toml` when Ray's dashboard packages
(`ray[default]`, which runs the job server) are installed. Only the processes the test started
are stopped (their process groups, then any process that names its Ray folder)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from catalog_compare import assert_same_catalog
from jobs.media.synthetic import make_video

import catalog
from pipeline.run import runner

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.own_cluster]
ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen], ray_dir: str) -> None:
    """SIGTERM the `ray start --block` groups, then kill whatever still names our Ray folder."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    mine = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if p.info["cmdline"] and any(ray_dir in part for part in p.info["cmdline"]):
                mine.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in mine:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(mine, timeout=10)


def _dashboard_missing() -> str | None:
    """Why this environment cannot run Ray's job server (None when it can)."""
    from ray._private.utils import get_dashboard_dependency_error

    error = get_dashboard_dependency_error()
    return None if error is None else f"ray job submit needs ray[default] (the dashboard): {error}"


@pytest.fixture(scope="module")
def ray_cluster():
    """(GCS address, dashboard URL, env): a head and a worker node on 127.0.0.1."""
    ray_dir = tempfile.mkdtemp(prefix="efs", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "EMOFORGE_PROGRESS": "0", "RAY_TMPDIR": ray_dir,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    port, dash = _free_port(), _free_port()
    common = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats", "--block",
              "--dashboard-agent-listen-port", None, "--metrics-export-port", None]
    procs: list[subprocess.Popen] = []

    def start(args: list[str]) -> None:
        filled = [a if a is not None else str(_free_port()) for a in common]
        log = open(Path(ray_dir) / f"start-{len(procs)}.log", "w")  # noqa: SIM115 - kept by the process
        procs.append(subprocess.Popen([str(BIN / "ray"), "start", *args, *filled], env=env,
                                      start_new_session=True, stdout=log, stderr=subprocess.STDOUT))

    try:
        dashboard = ["--include-dashboard", "false"] if _dashboard_missing() else [
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)]
        start(["--head", "--port", str(port), "--temp-dir", ray_dir, *dashboard])
        address = f"127.0.0.1:{port}"
        _wait_nodes(address, 1, env, procs)
        start(["--address", address])
        _wait_nodes(address, 2, env, procs)
        yield address, f"http://127.0.0.1:{dash}", env
    finally:
        _stop(procs, ray_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)


def _wait_nodes(address: str, count: int, env: dict, procs: list[subprocess.Popen],
                timeout: float = 120) -> None:
    probe = ("import ray; ray.init(address=%r, log_to_driver=False); "
             "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    deadline = time.time() + timeout
    while time.time() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            log = Path(env["RAY_TMPDIR"]) / f"start-{procs.index(dead[0])}.log"
            raise AssertionError(f"ray start exited: {log.read_text()[-3000:]}")
        try:
            done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                  text=True, timeout=60)
        except subprocess.TimeoutExpired:
            continue
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster at {address} did not reach {count} nodes")


def _inputs(folder: Path, n: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"v{i:02d}.mp4"
        make_video(path, lambda k, i=i: np.full((32, 32, 3), (i * 41 + 3 * k) % 255, np.uint8), 25, size=(32, 32))
        files.append(str(path))
    return files


def _reference(tmp_path: Path, files: list[str]) -> Path:
    reference = tmp_path / "reference"  # this machine's local Ray
    runner.run_stages(files, str(reference), ["ingest", "scenes"], {}, runner.RunnerConfig())
    return reference


def _check(out: Path, files: list[str], reference: Path) -> None:
    rows = catalog.read_table(out, "videos").to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted(files)
    assert all(r["scenes_status"] == "ok" for r in rows)
    assert catalog.validate(out) == []
    assert_same_catalog(out, reference)


def _job_spec(tmp_path: Path, files: list[str], out: Path) -> Path:
    spec = tmp_path / f"{out.name}.toml"
    spec.write_text(f'[job]\ninputs = {files!r}\nout = "{out}"\nstages = ["ingest", "scenes"]\n'
                    '[runner]\nwave_videos = 2\n'.replace("'", '"'))
    return spec


def test_curate_attaches_with_ray_address_and_RAY_ADDRESS(ray_cluster, tmp_path, ray_local):
    address, _, env = ray_cluster
    files = _inputs(tmp_path / "in", 4)
    attached = tmp_path / "attached"
    done = subprocess.run([str(BIN / "emoforge"), "curate", "--input", *files, "--out", str(attached),
                           "--stages", "ingest,scenes", "--ray-address", address, "--no-persons"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Started a local Ray instance" not in done.stderr  # it attached to the cluster
    from_env = tmp_path / "from_env"  # a submitted job's driver: RAY_ADDRESS, a job spec
    done = subprocess.run([str(BIN / "emoforge"), "curate", str(_job_spec(tmp_path, files, from_env)),
                           "--no-persons"], cwd=ROOT, env={**env, "RAY_ADDRESS": address},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Started a local Ray instance" not in done.stderr
    reference = _reference(tmp_path, files)
    _check(attached, files, reference)
    _check(from_env, files, reference)


def _uploaded_packages(ray_dir: str) -> list[Path]:
    """The working-dir packages Ray unpacked for jobs under the test's Ray folder."""
    found = Path(ray_dir).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    return sorted(p for p in found if p.is_dir())  # not the .zip and .zip.lock beside them


def test_ray_job_submit(ray_cluster, tmp_path, ray_local):
    """`ray job submit --working-dir . -- emoforge curate jobs/default.toml ...` from the repository
    root: the spec is a relative path read from the uploaded copy (the driver's working directory on
    the head node), the upload leaves out .venv, .git (Ray's default excludes) and out/ (.gitignore),
    and the catalog, written to an absolute path, equals a local run's."""
    missing = _dashboard_missing()
    if missing:
        pytest.skip(missing)
    _, dashboard, env = ray_cluster
    files = _inputs(tmp_path / "in", 4)
    submitted = tmp_path / "submitted"
    before = set(_uploaded_packages(env["RAY_TMPDIR"]))
    done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard,
                           "--working-dir", ".", "--", "emoforge", "curate", "jobs/default.toml",
                           "--input", *files, "--out", str(submitted), "--stages", "ingest,scenes",
                           "--set", "runner.wave_videos=2", "--no-persons"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "succeeded" in done.stdout, (  # the job's log, then Ray's
        done.stdout[-4000:] + "\n--- stderr:\n" + done.stderr[-1500:])
    _check(submitted, files, _reference(tmp_path, files))
    new = [p for p in _uploaded_packages(env["RAY_TMPDIR"]) if p not in before]
    assert new, "Ray unpacked no working-dir package for the job"
    for package in new:
        top = {p.name for p in package.iterdir()}
        assert {"jobs", "pipeline", "catalog", "pyproject.toml"} <= top, sorted(top)
        assert not top & {".venv", "out", ".git", "emoforge.egg-info"}, sorted(top)
        spec = "jobs/default.toml"
        assert (package / spec).read_bytes() == (ROOT / spec).read_bytes()
