"""Job specs: frozen dataclasses loaded from TOML, with `--set section.key=value` overrides.

    [job]
    inputs = ["videos/"]          # files or folders (searched recursively for video files)
    out = "out/catalog"
    stages = ["ingest", "scenes", "faces", "analyze"]
    [runner]                      # pipeline.run.config.RunnerConfig
    num_shards = 64
    [scenes]                      # each stage's Config dataclass
    detector = "adaptive"
    [select]                      # catalog.Thresholds: what the report (and training) select
    min_face_px_median = 128
    lip_sync_rules.av_corr.min_confidence = 0.7
    [storage]                     # s3:// inputs and catalogs (else the AWS_* variables)
    endpoint_url = "http://minio:9000"
    region = "us-east-1"

Loaded by the spec loader shared with `emoforge train` (catalog/spec.py): unknown sections or
keys are an error that lists the valid ones (a section of training specs says so), and
`--set select.x=y` works like any other override (dotted keys reach nested tables).
"""

from __future__ import annotations

import os
from pathlib import Path

from catalog import fs, fs_inputs
from catalog.spec import (
    SpecError,
    dataclass_from,
    read_toml,
    select_from,
    with_overrides,
)
from pipeline.run.config import RunnerConfig
from pipeline.run.job import DEFAULT_STAGES, JobSpec
from pipeline.stages.registry import STAGE_CLASSES, load_stage_class

__all__ = ["DEFAULT_STAGES", "JobSpec", "SpecError", "build", "load", "scan_inputs"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}
# audio-only containers are inputs too: they become failed rows ("no video stream"), not silence
AUDIO_SUFFIXES = {".m4a", ".wav", ".mp3", ".aac", ".flac", ".ogg", ".opus", ".wma"}
JOB_KEYS = ("inputs", "out", "stages")


def config_classes(stages: tuple[str, ...]) -> dict[str, type]:
    return {name: load_stage_class(name).Config for name in stages}


def build(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """A JobSpec from a TOML-shaped dict plus `section.key=value` overrides (catalog/spec.py)."""
    data = with_overrides(data, overrides, "curate")
    job = data.pop("job", {})
    unknown = set(job) - set(JOB_KEYS)
    if unknown:
        raise SpecError(f"[job] has unknown keys {sorted(unknown)}; valid: {', '.join(JOB_KEYS)}")
    stages = tuple(job.get("stages", DEFAULT_STAGES))
    bad = [s for s in stages if s not in STAGE_CLASSES]
    if bad:
        raise SpecError(f"unknown stages {bad}; valid: {list(STAGE_CLASSES)}")
    stages = tuple(s for s in STAGE_CLASSES if s in stages)  # pipeline order
    storage = data.pop("storage", {})
    if storage:  # object-store endpoint, region, credentials: set for this process (catalog/fs.py)
        try:
            fs.configure(storage)
        except fs.RootError as exc:
            raise SpecError(str(exc)) from None
    runner = dataclass_from(RunnerConfig, data.pop("runner", {}), "runner")
    select = select_from(data.pop("select", {}))
    configs = {name: dataclass_from(load_stage_class(name).Config, values, name)
               for name, values in data.items() if name in stages}
    classes = config_classes(stages)
    for name in stages:
        configs.setdefault(name, classes[name]())
    inputs = tuple(str(p) for p in job.get("inputs", []))
    return JobSpec(inputs=inputs, out=str(job.get("out", "out/catalog")), stages=stages,
                   runner=runner, configs=configs, select=select)


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> JobSpec:
    """The JobSpec of the TOML file at `path` with `overrides` applied."""
    return build(read_toml(path), overrides)


def expand_inputs(inputs: tuple[str, ...] | list[str]) -> list[str]:
    """The input files (see `scan_inputs`), without the count of ignored ones."""
    return scan_inputs(inputs)[0]


def scan_inputs(inputs: tuple[str, ...] | list[str]) -> tuple[list[str], dict[str, int]]:
    """(files, ignored): files as given and, from folders (searched recursively, sorted), every
    video or audio-only container (VIDEO_SUFFIXES, AUDIO_SUFFIXES); local paths made absolute,
    object-store URIs kept as given. `ignored` counts the other files found in folders by
    extension ("(none)" for names without one). Broken links and unreadable files are kept:
    they become failed rows, never silently dropped. A missing input is a SpecError."""
    files: list[str] = []
    ignored: dict[str, int] = {}
    for item in inputs:
        if "://" in str(item) and not str(item).startswith("file://"):
            suffix = os.path.splitext(str(item).rstrip("/").rsplit("/", 1)[-1])[1].lower()
            if suffix in VIDEO_SUFFIXES or suffix in AUDIO_SUFFIXES:  # an object, as given
                files.append(str(item))
                continue
            found = fs_inputs.list_input(str(item))  # the objects under a prefix (a "folder")
            if not found:
                raise SpecError(f"input {item} does not exist (no object, no objects under it)")
            if found == [str(item)]:
                files.append(str(item))
                continue
            for uri in found:
                suffix = os.path.splitext(uri.rsplit("/", 1)[-1])[1].lower()
                if suffix in VIDEO_SUFFIXES or suffix in AUDIO_SUFFIXES:
                    files.append(uri)
                else:
                    ignored[suffix or "(none)"] = ignored.get(suffix or "(none)", 0) + 1
            continue
        path = Path(str(item).removeprefix("file://"))
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if not (p.is_file() or p.is_symlink()) or p.is_dir():
                    continue
                suffix = p.suffix.lower()
                if suffix in VIDEO_SUFFIXES or suffix in AUDIO_SUFFIXES:
                    files.append(os.path.abspath(p))
                else:
                    ignored[suffix or "(none)"] = ignored.get(suffix or "(none)", 0) + 1
        elif path.exists() or path.is_symlink():
            files.append(os.path.abspath(path))
        else:
            raise SpecError(f"input {item} does not exist")
    return files, dict(sorted(ignored.items()))
