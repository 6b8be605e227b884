"""Job specs: frozen dataclasses loaded from TOML, with `--set section.key=value` overrides.

    [job]
    inputs = ["videos/"]          # files or folders (searched recursively for video files)
    out = "out/catalog"
    stages = ["ingest", "scenes", "faces", "analyze"]
    [runner]                      # pipeline.runner.RunnerConfig
    num_shards = 64
    [scenes]                      # each stage's Config dataclass
    detector = "adaptive"

Unknown sections or keys are an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.runner import STAGE_CLASSES, RunnerConfig, load_stage_class

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv"}
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

    def resolved(self) -> dict:
        """The spec as plain data (recorded in the manifest)."""
        return {
            "job": {"inputs": list(self.inputs), "out": self.out, "stages": list(self.stages)},
            "runner": dataclasses.asdict(self.runner),
            **{name: dataclasses.asdict(cfg) for name, cfg in self.configs.items()},
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
        data.setdefault(section, {})[key] = _parse_value(raw)
    job = data.pop("job", {})
    unknown = set(job) - {"inputs", "out", "stages"}
    if unknown:
        raise SpecError(f"[job] has unknown keys {sorted(unknown)}; valid: inputs, out, stages")
    stages = tuple(job.get("stages", DEFAULT_STAGES))
    bad = [s for s in stages if s not in STAGE_CLASSES]
    if bad:
        raise SpecError(f"unknown stages {bad}; valid: {list(STAGE_CLASSES)}")
    stages = tuple(s for s in STAGE_CLASSES if s in stages)  # pipeline order
    runner = _dataclass_from(RunnerConfig, data.pop("runner", {}), "runner")
    configs = {}
    for section, values in data.items():
        if section not in STAGE_CLASSES:
            raise SpecError(f"unknown section [{section}]; valid: job, runner, {', '.join(STAGE_CLASSES)}")
        if section in stages:
            configs[section] = _dataclass_from(load_stage_class(section).Config, values, section)
    classes = config_classes(stages)
    for name in stages:
        configs.setdefault(name, classes[name]())
    inputs = tuple(str(p) for p in job.get("inputs", []))
    return JobSpec(inputs=inputs, out=str(job.get("out", "out/catalog")), stages=stages,
                   runner=runner, configs={k: v for k, v in configs.items() if k in stages})


def load(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    with open(path, "rb") as f:
        return build(tomllib.load(f), overrides)


def expand_inputs(inputs: tuple[str, ...]) -> list[str]:
    """Files as given; folders searched recursively for video files (sorted). Broken links and
    unreadable files are kept: they become failed rows, never silently dropped."""
    out: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and (p.is_file() or p.is_symlink()))
        elif path.exists() or path.is_symlink():
            out.append(str(path))
        else:
            raise SpecError(f"input {item} does not exist")
    return out


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


def _parse_value(raw: str):
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
