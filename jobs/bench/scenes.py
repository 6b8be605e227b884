"""`emoforge bench scenes`: ingest plus scene split against the `scenedetect` command.

On the same files in the same run: (a) emoforge's hash + ingest + scenes stages called directly,
(b) `python -m jobs.cli curate --stages ingest,scenes` (the Ray runner, start-up included), and
(c) `scenedetect -i FILE detect-adaptive list-scenes` once per file. Reports frames per second of
each, wall-time ratios emoforge / scenedetect (<= 1.0: emoforge is at least as fast) and whether
every cut agrees within one frame. Without files, >= 5 minutes of 720p video with known hard cuts
are generated once into $EMOFORGE_CACHE/bench/.
"""

from __future__ import annotations

import csv
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from jobs.media.synthetic import generated_video
from pipeline.models.registry import cache_root
from pipeline.stages.ingest.hashing import assign_ids, hash_file
from pipeline.stages.ingest.stage import IngestConfig, IngestStage
from pipeline.stages.scenes.detect import ScenesConfig
from pipeline.stages.scenes.stage import ScenesStage

log = logging.getLogger(__name__)

BENCH_SIZE = (1280, 720)
BENCH_FPS = 25
BENCH_FILES = 4
BENCH_SECONDS = 76.0  # 4 x 76 s = 304 s of 720p


def default_files() -> list[Path]:
    folder = cache_root() / "bench" / "scenes"
    return [generated_video(folder / f"bench720-{i}-v3.mp4", BENCH_SECONDS, BENCH_SIZE, BENCH_FPS, i)[0]
            for i in range(BENCH_FILES)]


def run_direct(files: list[Path]) -> dict:
    """Hash + ingest + scenes stages called in this process (no Ray), per file in order."""
    config = ScenesConfig(trim_s=0.0)  # clip starts are then exactly the cut frames
    ingest, scenes = IngestStage(IngestConfig(), None), ScenesStage(config, None)
    ingest.setup()
    scenes.setup()
    started, cpu = time.perf_counter(), time.process_time()
    rows = assign_ids([hash_file(str(f)) for f in files], {}, 1)
    hashed = time.perf_counter()
    videos = [{**r, **ingest.process_row(r)} for r in rows]
    ingested = time.perf_counter()
    out = scenes.process(pa.Table.from_pylist(
        [{k: v[k] for k in ScenesStage.requires} for v in videos])).to_pylist()
    done, cpu = time.perf_counter(), time.process_time() - cpu
    cuts = {}
    for video, row in zip(videos, out):
        if row["scenes_status"] != "ok":
            raise RuntimeError(f"scenes failed on {video['uri']}: {row['scenes_error']}")
        cuts[video["uri"]] = [c["start_frame"] for c in row["clips"] if c["cut_before"] == "cut"]
    frames = int(sum(v["frame_count"] or 0 for v in videos))
    return {"wall_s": done - started, "hash_s": hashed - started, "ingest_s": ingested - hashed,
            "scenes_s": done - ingested, "frames": frames, "cpu_s": cpu,
            "frames_per_s": frames / (done - started), "cuts": cuts}


def run_scenedetect(files: list[Path], workdir: Path) -> dict:
    """`scenedetect -i FILE -o DIR -q detect-adaptive list-scenes` per file (default options)."""
    started, cpu = time.perf_counter(), _children_cpu_s()
    cuts = {}
    for f in files:
        name = f"{Path(f).stem}-scenes.csv"
        cmd = [sys.executable, "-m", "scenedetect", "-i", str(f), "-o", str(workdir), "-q",
               "detect-adaptive", "list-scenes", "-f", name, "--skip-cuts"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"scenedetect failed on {f}: {done.stderr.strip()[-800:]}")
        with open(workdir / name, newline="") as fh:
            starts = [int(r["Start Frame"]) - 1 for r in csv.DictReader(fh)]
        cuts[str(f)] = [s for s in starts if s > 0]
    return {"wall_s": time.perf_counter() - started, "cpu_s": _children_cpu_s() - cpu, "cuts": cuts,
            "command": "scenedetect -i FILE detect-adaptive list-scenes (per file)"}


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_ray(files: list[Path], workdir: Path) -> dict:
    """`python -m jobs.cli curate --input FILES --out TMP --stages ingest,scenes` (Ray)."""
    cmd = [sys.executable, "-m", "jobs.cli", "curate", "--input", *map(str, files),
           "--out", str(workdir / "catalog"), "--stages", "ingest,scenes"]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"status": f"failed: curate exited {done.returncode}: {done.stderr.strip()[-800:]}",
                "command": " ".join(cmd), "wall_s": wall}
    return {"status": "ok", "command": " ".join(cmd), "wall_s": wall,
            "ray_startup_s": ray_startup_s(), "output_tail": done.stdout.strip()[-800:]}


def ray_startup_s() -> float:
    """Wall time of a Python process that only starts and stops a local 2-CPU Ray (the part of
    `curate` that is Ray start-up, interpreter and imports included)."""
    code = ("import ray; ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False); "
            "ray.shutdown()")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    return time.perf_counter() - started


def compare_cuts(ours: dict[str, list[int]], theirs: dict[str, list[int]],
                 tolerance: int = 1) -> list[dict]:
    """Per file: cuts of each side without a partner within `tolerance` frames."""
    out = []
    for uri, a in ours.items():
        b = theirs.get(uri, [])
        only_ours = [x for x in a if not any(abs(x - y) <= tolerance for y in b)]
        only_theirs = [y for y in b if not any(abs(x - y) <= tolerance for x in a)]
        out.append({"file": uri, "cuts": len(a), "scenedetect_cuts": len(b),
                    "only_emoforge": only_ours, "only_scenedetect": only_theirs})
    return out


def run(files: list[str | Path] | None = None) -> dict:
    """Run the benchmark on `files` (generated 720p media when empty)."""
    import scenedetect  # optional: the PySceneDetect comparison only

    files = [Path(f) for f in files] if files else default_files()
    with tempfile.TemporaryDirectory(prefix="emoforge-bench-scenes-") as tmp:
        workdir = Path(tmp)
        theirs = run_scenedetect(files, workdir)
        ours = run_direct(files)
        ray = run_ray(files, workdir)
    per_file = compare_cuts(ours["cuts"], theirs["cuts"])
    frames = ours["frames"]
    theirs["frames_per_s"] = frames / theirs["wall_s"]
    result = {
        "files": [str(f) for f in files],
        "frames": frames,
        "scenedetect_version": scenedetect.__version__,
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "emoforge_direct": {k: v for k, v in ours.items() if k != "cuts"},
        "scenedetect": {k: v for k, v in theirs.items() if k != "cuts"},
        "emoforge_ray": ray,
        "ratio_without_ray": ours["wall_s"] / theirs["wall_s"],
        "cpu_ratio_without_ray": ours["cpu_s"] / theirs["cpu_s"],
        "ratio_with_ray": (ray["wall_s"] / theirs["wall_s"]) if ray.get("status") == "ok"
        else None,
        "ratio_with_ray_minus_startup": (
            (ray["wall_s"] - ray["ray_startup_s"]) / theirs["wall_s"]
            if ray.get("status") == "ok" else None),
        "cuts_agree_within_1_frame": all(
            not f["only_emoforge"] and not f["only_scenedetect"] for f in per_file),
        "per_file": per_file,
    }
    if ray.get("status") == "ok":
        result["emoforge_ray"]["frames_per_s"] = frames / ray["wall_s"]
    log.info("bench scenes: emoforge %.0f frames/s, scenedetect %.0f frames/s, ratio %.2f, "
             "cuts agree: %s", ours["frames_per_s"], theirs["frames_per_s"],
             result["ratio_without_ray"], result["cuts_agree_within_1_frame"])
    return result

