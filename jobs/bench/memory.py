"""`emoforge bench memory`: peak memory curating a 1-minute and a 30-minute generated input.

Each input is curated by `python -m jobs.cli curate --stages ingest,scenes` in a subprocess while
a sampler sums the resident memory (RSS) of that process tree every 0.2 s: the driver, Ray's
workers, the raylet (which holds the object store) and Ray's other daemons, plus the growth of
/dev/shm (the object store's shared memory). The same inputs also run through the stages without
Ray (`python -m jobs.bench.memory --direct FILE`), which isolates the stages' own memory.
Done when the 30-minute peak is within 20% of the 1-minute peak.

The faces stage is measured the same way without Ray (`--faces FILE FLUSH`) on a generated 720p
clip with one moving face, 15 s and 60 s long: with its crop clips streamed (the default
`faces.crop_flush_frames`, 250) the 60 s peak should stay near the 15 s one; keeping every
crop to the track's end (a flush interval longer than the clip) shows what streaming saves.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

import psutil

from jobs.media.synthetic import generated_video
from pipeline.models.registry import cache_root

log = logging.getLogger(__name__)

MEMORY_SIZE = (426, 240)  # 240p keeps generating 30 minutes of video to about a minute or two
DURATIONS_S = (60.0, 1800.0)
FACES_SIZE = (1280, 720)
FACES_DURATIONS_S = (15.0, 60.0)
STREAMED, KEPT = 250, 10**9  # faces.crop_flush_frames: the default, and never before the end
MiB = 1 << 20


def role(proc) -> str:
    """Which part of a curate run a process is: driver, worker, raylet, or ray_other."""
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except Exception:  # noqa: BLE001 - the process may have exited between listing and reading
        return "gone"
    if "raylet" in name or "/raylet" in cmd:
        return "raylet"
    if cmd.startswith("ray::") and "Agent" in cmd.split(" ")[0]:
        return "ray_other"  # ray::DashboardAgent, ray::RuntimeEnvAgent
    if cmd.startswith("ray::") or "default_worker.py" in cmd:
        return "workers"
    if "gcs_server" in name or name.startswith("ray") or "/ray/" in cmd:
        return "ray_other"
    return "other"


class TreeSampler:
    """Samples the RSS of a process and all its descendants until stopped: MiB peaks per role of
    the role's processes together (`peak`) and of its largest single process (`peak_process`)."""

    def __init__(self, pid: int, interval_s: float = 0.2):
        self.root = psutil.Process(pid)
        self.interval_s = interval_s
        self.peak: dict[str, float] = {}
        self.peak_process: dict[str, float] = {}
        self.peak_total = 0.0
        self.shm_base = _shm_used()
        self.peak_shm = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except Exception:  # noqa: BLE001 - the root exited
            return
        by_role: dict[str, float] = {"driver": 0.0}
        total = 0.0
        for proc in procs:
            try:
                rss = proc.memory_info().rss / MiB
            except Exception as exc:  # noqa: BLE001 - exited meanwhile
                log.debug("process %s gone while sampling: %s", proc.pid, exc)
                continue
            kind = "driver" if proc.pid == self.root.pid else role(proc)
            by_role[kind] = by_role.get(kind, 0.0) + rss
            self.peak_process[kind] = max(self.peak_process.get(kind, 0.0), rss)
            total += rss
        for kind, value in by_role.items():
            self.peak[kind] = max(self.peak.get(kind, 0.0), value)
        self.peak_total = max(self.peak_total, total)
        self.peak_shm = max(self.peak_shm, (_shm_used() - self.shm_base) / MiB)
        self.samples += 1


def _shm_used() -> float:
    try:
        return float(shutil.disk_usage("/dev/shm").used)
    except OSError:
        return 0.0


def measure(cmd: list[str]) -> dict:
    """Run `cmd`, sampling its process tree; peak MiB per role, wall time and exit status."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid) as sampler:
        stdout, stderr = proc.communicate()
    out = {"command": " ".join(cmd), "returncode": proc.returncode,
           "wall_s": time.perf_counter() - started, "peak_total_mib": sampler.peak_total,
           "peak_mib_by_role": sampler.peak, "peak_shm_growth_mib": sampler.peak_shm,
           "samples": sampler.samples}
    if proc.returncode != 0:
        out["error"] = stderr.strip()[-800:]
    else:
        out["output_tail"] = stdout.strip()[-400:]
    return out


def inputs() -> list[Path]:
    folder = cache_root() / "bench" / "memory"
    return [generated_video(folder / f"mem-{int(s)}s-{MEMORY_SIZE[1]}p-v2.mp4", s,
                            size=MEMORY_SIZE, seed=10 + i)[0]
            for i, s in enumerate(DURATIONS_S)]


def run(files: list[str | Path] | None = None) -> dict:
    """Measure peak memory for each input (default: a generated 1-minute and 30-minute video)
    with Ray (`emoforge curate`) and without (stages in one process)."""
    paths = [Path(f) for f in files] if files else inputs()
    results = []
    with tempfile.TemporaryDirectory(prefix="emoforge-bench-memory-") as tmp:
        for i, path in enumerate(paths):
            curate = [sys.executable, "-m", "jobs.cli", "curate", "--input", str(path),
                      "--out", str(Path(tmp) / f"catalog-{i}"), "--stages", "ingest,scenes"]
            direct = [sys.executable, "-m", "jobs.bench.memory", "--direct", str(path)]
            results.append({"file": str(path), "ray": measure(curate), "direct": measure(direct)})
            log.info("bench memory: %s: ray peak %.0f MiB, direct peak %.0f MiB", path.name,
                     results[-1]["ray"]["peak_total_mib"], results[-1]["direct"]["peak_total_mib"])
    summary: dict = {"inputs": results, "size": list(MEMORY_SIZE)}
    if len(results) >= 2:
        for mode in ("ray", "direct"):
            first, last = results[0][mode]["peak_total_mib"], results[-1][mode]["peak_total_mib"]
            summary[f"{mode}_peak_ratio_last_to_first"] = last / first if first else None
            summary[f"{mode}_within_20_percent"] = bool(first and last <= 1.2 * first)
    summary["faces"] = faces_memory()
    return summary


def faces_memory() -> dict:
    """Peak memory of the faces stage (no Ray) on a 15 s and a 60 s generated face clip, crop
    clips streamed, and on the 60 s clip with every crop kept to the end."""
    from jobs.bench.faces import generate_inputs  # lazy: measured process

    folder = cache_root() / "bench" / "memory"
    paths = {}
    for seconds in FACES_DURATIONS_S:
        sub = folder / f"faces-{int(seconds)}s-v1"
        sub.mkdir(parents=True, exist_ok=True)
        expected = sub / f"bench_{FACES_SIZE[0]}x{FACES_SIZE[1]}.mp4"
        paths[seconds] = expected if expected.is_file() else Path(
            generate_inputs(str(sub), seconds, (FACES_SIZE,))[0])
    short, long = (paths[s] for s in FACES_DURATIONS_S)
    runs = {"short_streamed": (short, STREAMED), "long_streamed": (long, STREAMED),
            "long_kept": (long, KEPT)}
    out: dict = {"size": list(FACES_SIZE), "seconds": list(FACES_DURATIONS_S)}
    for name, (path, flush) in runs.items():
        out[name] = measure([sys.executable, "-m", "jobs.bench.memory", "--faces", str(path),
                             str(flush)])
        log.info("bench memory: faces %s: peak %.0f MiB", name, out[name]["peak_total_mib"])
    peak = {name: out[name]["peak_total_mib"] for name in runs}
    out["streamed_peak_ratio_long_to_short"] = peak["long_streamed"] / peak["short_streamed"]
    out["kept_over_streamed_long"] = peak["long_kept"] / peak["long_streamed"]
    return out


def _direct_faces(path: str, flush_frames: int) -> None:
    """Track and crop the faces of one file in this process (one clip: the whole file)."""
    import pyarrow as pa  # lazy: measured process

    from pipeline.stages.contract import StageContext  # lazy: measured process
    from pipeline.stages.faces.stage import FacesConfig, FacesStage  # lazy: measured process
    from pipeline.media import probe  # lazy: measured process

    info = probe(path)
    with tempfile.TemporaryDirectory(prefix="emoforge-bench-faces-") as root:
        stage = FacesStage(FacesConfig(crop_flush_frames=flush_frames),
                           StageContext(root, f"{root}/_staging/run"))
        stage.setup()
        row = {"clip_id": "clip0", "video_id": "video0", "shard": 0, "start_s": 0.0,
               "end_s": info["duration_s"] + 1.0, "uri": path, "fps": info["fps"],
               "width": info["width"], "height": info["height"], "rotation": 0,
               "has_audio": False}
        out = stage.process(pa.Table.from_pylist([row])).to_pylist()[0]
    if out["faces_status"] != "ok":
        raise SystemExit(f"faces {out['faces_status']} on {path}: {out['faces_error']}")
    sys.stdout.write(f"{path}: {out['track_count']} tracks, "
                     f"{sum(t['frame_count'] or 0 for t in out['tracks'])} crop frames\n")


def _direct(path: str) -> None:
    """Hash, ingest and scene-split one file in this process (the no-Ray memory baseline)."""
    import pyarrow as pa  # lazy: measured process

    from pipeline.stages.ingest.hashing import assign_ids, hash_file  # lazy: measured process
    from pipeline.stages.scenes.detect import ScenesConfig  # lazy: measured process
    from pipeline.stages.ingest.stage import IngestConfig, IngestStage  # lazy: measured process
    from pipeline.stages.scenes.stage import ScenesStage  # lazy: measured process

    row = assign_ids([hash_file(path)], {}, 1)[0]
    row = {**row, **IngestStage(IngestConfig(), None).process_row(row)}
    stage = ScenesStage(ScenesConfig(), None)
    stage.setup()
    out = stage.process(pa.Table.from_pylist([{k: row[k] for k in ScenesStage.requires}]))
    status = out.column("scenes_status")[0].as_py()
    if status != "ok":
        raise SystemExit(f"scenes {status} on {path}: {out.column('scenes_error')[0].as_py()}")
    sys.stdout.write(f"{path}: {out.column('scene_count')[0].as_py()} clips\n")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if len(sys.argv) == 3 and sys.argv[1] == "--direct":
        _direct(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "--faces":
        _direct_faces(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m jobs.bench.memory --direct FILE | --faces FILE FLUSH_FRAMES "
                         "(the benchmark itself: emoforge bench memory)")
