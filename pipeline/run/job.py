"""A curation job as the runner takes it whole: inputs, catalog, stages, the [runner] section,
each stage's config and the [select] thresholds (built from TOML by jobs/spec.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from catalog.select import Thresholds
from catalog.spec import plain
from pipeline.run.config import RunnerConfig

DEFAULT_STAGES = ("ingest", "scenes", "faces", "analyze")


@dataclass(frozen=True)
class JobSpec:
    """A resolved job spec: `configs` maps each stage name to its Config dataclass."""

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
            "select": plain(dataclasses.asdict(self.select)),
        }
