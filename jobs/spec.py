"""Job specs: frozen dataclasses loaded from TOML, with `--set section.key=value` overrides.

    [job]
    inputs = ["videos/"]          # files or folders (searched recursively for video files)
    out = "out/catalog"
    stages = ["ingest", "scenes", "faces", "analyze"]
    [runner]                      # pipeline.run.runner.RunnerConfig
    num_shards = 64
    [scenes]                      # each stage's Config dataclass
    detector = "adaptive"
    [select]                      # catalog.Thresholds: what the report (and training) select
    min_face_px = 128
    lip_sync_rules.av_corr.min_confidence = 0.7
    [storage]                     # s3:// inputs and catalogs (else the AWS_* variables)
    endpoint_url = "http://minio:9000"
    region = "us-east-1"

Unknown sections or keys are an error that lists the valid ones. `--set select.x=y` works like
any other override (dotted keys reach nested rules).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catalog.select import SelectionError, Thresholds, thresholds_with
from pipeline.run.runner import RunnerConfig
from pipeline.stages.registry import STAGE_CLASSES, load_stage_class

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}
# audio-only containers are inputs too: they become failed rows ("no video stream"), not silence
AUDIO_SUFFIXES = {".m4a", ".wav", ".mp3", ".aac", ".flac", ".ogg", ".opus", ".wma"}
DEFAULT_STAGES = ("ingest", "scenes", "faces", "analyze")


class SpecError(ValueError):
    """A job spec or override that cannot be used; the message lists what is valid."""


@dataclass(frozen=True)
class JobSpec:
    inputs: tuple[str, ...]
    out: str
    stages: tuple[str, ...] = DEFAULT_STAGES
    runner: RunnerConfig = RunnerConfig()
    configs: dict[str, Any] = field(default_factory=dict)
    select: Thresholds = field(default_factory=Thresholds)

    def resolved(self) -> dict:
        """The spec as plain data (recorded in the manifest; the report reads [select] here)."""
        return {
            "job": {"inputs": list(self.inputs), "out": self.out, "stages": list(self.stages)},
            "runner": dataclasses.asdict(self.runner),
            **{name: dataclasses.asdict(cfg) for name, cfg in self.configs.items()},
            "select": _plain(dataclasses.asdict(self.select)),
        }


def config_classes(stages: tuple[str, ...]) -> dict[str, type]:
    return {name: load_stage_class(name).Config for name in stages}


def build(data: dict, overrides: list[str] = ()) -> JobSpec:
    """A JobSpec from a TOML-shaped dict plus `section.key=value` overrides."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise SpecError(f"override {item!r} is not section.key=value")
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        node = data.setdefault(section, {})
        # nested tables: analyze.audio.transcribe=false,
        # select.lip_sync_rules.av_corr.min_confidence=0.7
        *parents, key = key.split(".")
        for part in parents:
            node[part] = dict(node.get(part) or {})  # a copy: the loaded TOML stays as read
            node = node[part]
        node[key] = _parse_value(raw)
    job = data.pop("job", {})
    unknown = set(job) - {"inputs", "out", "stages"}
    if unknown:
        raise SpecError(f"[job] has unknown keys {sorted(unknown)}; valid: inputs, out, stages")
    stages = tuple(job.get("stages", DEFAULT_STAGES))
    bad = [s for s in stages if s not in STAGE_CLASSES]
    if bad:
        raise SpecError(f"unknown stages {bad}; valid: {list(STAGE_CLASSES)}")
    stages = tuple(s for s in STAGE_CLASSES if s in stages)  # pipeline order
    storage = data.pop("storage", {})
    if storage:  # object-store endpoint, region, credentials: set for this process (catalog/fs.py)
        from catalog import fs

        try:
            fs.configure(storage)
        except fs.RootError as exc:
            raise SpecError(str(exc)) from None
    runner = _dataclass_from(RunnerConfig, data.pop("runner", {}), "runner")
    try:
        select = thresholds_with(Thresholds(), data.pop("select", {}))
    except (SelectionError, TypeError) as exc:
        raise SpecError(f"[select]: {exc}") from None
    configs = {}
    for section, values in data.items():
        if section not in STAGE_CLASSES:
            raise SpecError(f"unknown section [{section}]; valid: job, runner, select, storage, "
                            f"{', '.join(STAGE_CLASSES)}")
        if section in stages:
            configs[section] = _dataclass_from(load_stage_class(section).Config, values, section)
    classes = config_classes(stages)
    for name in stages:
        configs.setdefault(name, classes[name]())
    inputs = tuple(str(p) for p in job.get("inputs", []))
    return JobSpec(inputs=inputs, out=str(job.get("out", "out/catalog")), stages=stages,
                   runner=runner, configs={k: v for k, v in configs.items() if k in stages},
                   select=select)


def load(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    with open(path, "rb") as f:
        return build(tomllib.load(f), overrides)


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
            from catalog import fs_inputs

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


def _dataclass_from(cls: type, values: dict, section: str):
    valid = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(valid)
    if unknown:
        raise SpecError(f"[{section}] has unknown keys {sorted(unknown)}; valid: {sorted(valid)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        converted[key] = tuple(value) if isinstance(value, list) and "tuple" in str(hints.get(key)) else value
    return cls(**converted)


def _plain(values: dict) -> dict:
    """Tuples as lists (TOML and JSON have arrays)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _parse_value(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
