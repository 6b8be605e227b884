"""The stage contract: what every pipeline stage is, and the per-row error boundary.

A stage is a small class. The runner (pipeline/run/runner.py, the only module that knows Ray) builds
it on a worker with a cheap picklable constructor, calls `setup()` once (load models there), then
calls `process(batch)` with pyarrow tables of the stage's `level` rows joined with the columns it
`requires`. `process` returns one row per input row, in order, holding only the stage's own
columns (`catalog.schema.stage_output(name, level)`); fan-out stages add a list<struct> column per
child table (clips of a video, tracks of a clip, frames of a track) and the runner's sink explodes
them into those tables.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import traceback
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from catalog import layout
from catalog.schema import stage_output
from pipeline.models.registry import ModelSpec, weights_checksum

log = logging.getLogger(__name__)

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass(frozen=True)
class StageContext:
    """What a stage may know about the run: where the catalog and this run's staging area are.

    Media files (face crops, sidecars) are written under `staging_media(shard, relpath)` and
    referenced in rows by `relpath` (always `media/<shard>/...`); the commit moves them to
    `<catalog>/<relpath>`."""

    catalog: str  # local catalog root (absolute path)
    staging: str  # this run's staging root: <catalog>/_staging/<run id>

    def staging_media(self, shard: int, relpath: str) -> str:
        if not relpath.startswith(f"{layout.MEDIA}/"):
            raise ValueError(f"media paths start with '{layout.MEDIA}/', got {relpath!r}")
        path = os.path.join(self.staging, layout.staging_shard(shard), relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def move_to(self, other: StageContext) -> None:
        """Point this context at `other`'s catalog and staging area. A worker process keeps its
        set-up stages (their loaded models) for the whole run; they and their analyzers share
        one context, which each task points at its own wave's staging area first."""
        object.__setattr__(self, "catalog", other.catalog)
        object.__setattr__(self, "staging", other.staging)

    def media_path(self, relpath: str) -> str:
        """Where a media file written by an earlier stage is now: staged in this run, or committed."""
        staged = os.path.join(self.staging, layout.staging_shard(layout.media_shard(relpath)),
                              relpath)
        return staged if os.path.exists(staged) else os.path.join(self.catalog, relpath)


@dataclass(frozen=True)
class NoConfig:
    """For stages without options."""


class Stage:
    """Base class. Subclasses set the class attributes and implement `process` (or `process_row`).

    name      canonical stage name (config section, column prefix, status column)
    covers    canonical names of the stages it computes (an analyzer group covers several)
    level     the table whose rows it processes: "videos", "clips" or "tracks"
    requires  columns it reads (from its level table, or its ancestors' tables by key)
    after     stages whose `<stage>_status` must be "ok" for a row to be processed; other rows
              get status "skipped" with the reason, without calling process
    """

    name: ClassVar[str]
    level: ClassVar[str]
    requires: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()
    Config: ClassVar[type] = NoConfig
    version: ClassVar[str] = "1"
    num_cpus: ClassVar[float] = 0.5
    uses_models: ClassVar[bool] = False  # True: run in an actor pool (setup loads models once)

    def __init__(self, config: Any, context: StageContext):
        self.config = config
        self.context = context

    @classmethod
    def covers(cls) -> tuple[str, ...]:
        return (cls.name,)

    def model_specs(self) -> list[ModelSpec]:
        """The weights this stage's configured backends use (fingerprint, manifest, licenses)."""
        return []

    def models_by_stage(self) -> dict[str, list[ModelSpec]]:
        """The weights each covered stage uses (an analyzer group splits them per analyzer)."""
        return {name: self.model_specs() for name in self.covers()}

    def setup(self) -> None:
        """Load models. Called once per worker before the first batch."""

    def parts(self, row: dict) -> list:
        """Independent pieces of one row's work (picklable), for rows too big to be one task:
        the runner runs them as parallel tasks anywhere in the cluster and hands their results,
        in order, to `combine`. Empty (the default): the row is one task."""
        return []

    def process_part(self, row: dict, part: Any) -> Any:
        """One of `parts(row)` (runs on any worker, after `setup`); returns a picklable result."""
        raise NotImplementedError(f"{type(self).__name__} offers no parts")

    def combine(self, row: dict, results: list) -> dict:
        """The row's output from its parts' results (in the order of `parts`)."""
        raise NotImplementedError(f"{type(self).__name__} offers no parts")

    def output_schema(self) -> pa.Schema:
        return stage_output(self.covers(), self.level)

    def process(self, batch: pa.Table) -> pa.Table:
        """Default: call `process_row` per row inside the per-row error boundary."""
        rows = [self.safe_process_row(row) for row in batch.to_pylist()]
        return rows_to_table(rows, self.output_schema())

    def process_row(self, row: dict) -> dict:
        raise NotImplementedError(f"{type(self).__name__} implements neither process nor process_row")

    def safe_process_row(self, row: dict) -> dict:
        """The per-row boundary: an exception becomes `failed` with the error, never a lost row."""
        try:
            return self.process_row(row)
        except Exception as exc:  # noqa: BLE001 - recorded per row, the job goes on
            log.debug("%s failed on a row: %s", self.name, traceback.format_exc())
            return self.failed_row(f"{type(exc).__name__}: {exc}")

    def failed_row(self, error: str, status: str = FAILED) -> dict:
        """A row with every stage column null except the covered stages' status and error."""
        out: dict[str, Any] = {}
        for stage in self.covers():
            out[f"{stage}_status"] = status
            out[f"{stage}_error"] = error
        return out

    def config_for(self, stage: str) -> Any:
        """The config of one covered stage (an analyzer group has one per analyzer)."""
        return self.config

    def version_for(self, stage: str) -> str:
        return self.version

    def resolved_for(self, stage: str) -> dict:
        """Settings the config implies that readers of the catalog need as resolved (the faces
        stage's crop geometry); recorded in the manifest beside the config."""
        return {}

    def fingerprints(self) -> dict[str, str]:
        """Per covered stage: hash(its config, its version, its backends' versions and weights)."""
        out = {}
        models = self.models_by_stage()
        for name in self.covers():
            payload = json.dumps({
                "config": fingerprint_dict(self.config_for(name)),
                "version": self.version_for(name),
                "models": [{"key": s.key, "version": s.version, "weights": weights_checksum(s)}
                           for s in models.get(name, [])],
            }, sort_keys=True, default=str)
            out[name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return out


def config_dict(config: Any) -> dict:
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})


def fingerprint_dict(config: Any) -> dict:
    """The config fields that decide a stage's output: all but those declared with
    `field(metadata={"fingerprint": False})` (how the work is split up, not what it computes)."""
    out = config_dict(config)
    if dataclasses.is_dataclass(config):
        for item in dataclasses.fields(config):
            if not item.metadata.get("fingerprint", True):
                out.pop(item.name, None)
    return out


def rows_to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts, missing keys null) to a table cast to `schema`; unknown keys are an error."""
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise KeyError(f"stage returned undeclared columns {sorted(extra)}; declared: {sorted(names)}")
    return pa.Table.from_pylist([{n: row.get(n) for n in schema.names} for row in rows], schema=schema)
