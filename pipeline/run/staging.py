"""A wave's staging area (pyarrow only): what stages read, what they wrote, what gets committed.

Layout: `_staging/<run>/shard-SSSSS/<table>/<stage>-<uuid>.parquet` and
`_staging/<run>/shard-SSSSS/media/...`, inside a local catalog; for an object-store catalog the
same tree lives in a local folder (`staging_root`), and the commit uploads from it. A stage's input and a shard's commit are both built by
`WaveStaging.table`, which upserts the committed rows with this run's parts (pipeline/run/assemble.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from catalog import fs, layout, schema
from catalog.commits import commit_shard, read_commits
from catalog.read import read_table
from pipeline.run import assemble
from pipeline.stages.contract import SKIPPED, Stage, rows_to_table

log = logging.getLogger(__name__)
ROW_TABLES = ("videos", "clips", "tracks", "frames")


def staging_root(root: str | Path | fs.Root) -> Path:
    """Where a catalog's runs stage their work: `<catalog>/_staging` for a local catalog; for an
    object store a local folder, `$EMOFORGE_STAGING/<hash of the catalog uri>` (default: the
    system temp folder). On a multi-node cluster with a store catalog, EMOFORGE_STAGING must be
    a folder every node shares (workers write parts there, the driver commits them)."""
    root = fs.resolve(root)
    if root.local:
        return root.local_path() / layout.STAGING
    base = os.environ.get("EMOFORGE_STAGING") or os.path.join(tempfile.gettempdir(), "emoforge-staging")
    return Path(base) / hashlib.sha256(root.uri.encode()).hexdigest()[:16]


def remove_staging(root: str | Path | fs.Root) -> None:
    """Delete every run's staging area of the catalog (the lease holder only)."""
    shutil.rmtree(staging_root(root), ignore_errors=True)


def shard_folder(staging: Path, shard: int) -> Path:
    return Path(staging) / layout.staging_shard(shard)


def created_tables(stage: Stage) -> list[str]:
    """Tables whose rows this stage creates (its own level's for ingest, its children's else)."""
    return [t for t, creator in schema.CREATED_BY.items() if creator in stage.covers()]


def fill_keys(result: pa.Table, batch: pa.Table, level: str) -> pa.Table:
    """Give a stage's output rows the level key, video_id and shard of their input rows, and any
    other output column that came in the input and the stage left null (a failed row's uri)."""
    passed = [c for c in result.column_names if c in batch.column_names]
    for key in dict.fromkeys([*schema.KEYS[level], "video_id", "shard", *passed]):
        if key not in batch.column_names:
            continue
        if key in result.column_names:
            index = result.column_names.index(key)
            filled = pc.coalesce(result[key], batch[key].cast(result.schema.field(key).type))
            result = result.set_column(index, key, filled)
        else:
            result = result.append_column(key, batch[key])
    return result


def rows_with_keys(stage: Stage, rows: list[dict], batch: pa.Table) -> pa.Table:
    return fill_keys(rows_to_table(rows, stage.output_schema()), batch, stage.level)


def write_output(out: pa.Table, stage_name: str, level: str, staging: Path) -> list[tuple[int, str, int]]:
    """Split a stage output by shard, explode its children into their tables, write Parquet
    parts. Returns (shard, table, rows) per part. Runs on workers (the Ray Data sink)."""
    written = []
    for shard in sorted(set(out["shard"].to_pylist())):
        subset = out.filter(pc.equal(out["shard"], shard))
        for table, part in assemble.explode(subset, level).items():
            assemble.write_part(shard_folder(staging, shard) / table, stage_name, part)
            written.append((shard, table, part.num_rows))
    return written


def blocked_reason(stage: Stage, row: dict) -> str | None:
    """Why a row cannot run this stage (a prerequisite stage not ok), or None."""
    bad = [f"{a} {row.get(f'{a}_status') or 'missing'}" for a in stage.after if row.get(f"{a}_status") != "ok"]
    return f"not run: {', '.join(bad)}" if bad else None


def merge_columns(row: pa.Table, result: pa.Table, level: str) -> pa.Table:
    """The row with a stage's output columns on it (replacing same-named ones), children left
    out: the input of the next stage of a chain."""
    child = schema.CHILDREN.get(level)
    for name in result.column_names:
        if name == child:
            continue
        if name in row.column_names:
            row = row.set_column(row.column_names.index(name), name, result[name])
        else:
            row = row.append_column(name, result[name])
    return row


def split_by_after(stage: Stage, batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Rows whose prerequisite stages are ok, and the others."""
    ok = pa.array([True] * batch.num_rows, pa.bool_())
    for after in stage.after:
        column = f"{after}_status"
        if column in batch.column_names:
            ok = pc.and_(ok, pc.fill_null(pc.equal(batch[column], "ok"), False))
    return batch.filter(ok), batch.filter(pc.invert(ok))


class WaveStaging:
    """The committed rows of a wave's shards plus what this run's stages have staged so far."""

    def __init__(self, root: str | Path | fs.Root, staging: Path, wave: list[int],
                 stage_names: list[str]):
        self.root, self.staging, self.wave = fs.resolve(root), Path(staging), wave
        self.stage_names = stage_names  # staged parts are named by the stage's own name
        self.committed = {t: {s: read_table(root, t, shards={s}) for s in wave} for t in ROW_TABLES}
        self.redone: dict[str, set[str]] = {}  # table -> videos its creating stage redid

    def mark_redone(self, stage: Stage, videos: set[str]) -> None:
        for table in created_tables(stage):
            self.redone.setdefault(table, set()).update(videos)

    def table(self, name: str, shard: int) -> pa.Table:
        """A shard's current table: committed rows upserted with this run's parts."""
        folder = shard_folder(self.staging, shard) / name
        parts = {}
        for stage in self.stage_names:
            part = assemble.read_parts(folder, stage)
            if part is not None:
                parts[stage] = part
        videos = self.redone.get(name, set())
        if name == "frames":  # frames carry no video_id: drop by the redone videos' tracks
            tracks = self.committed["tracks"][shard]
            ids = set()
            if videos and tracks.num_rows:
                mask = pc.is_in(tracks["video_id"], pa.array(sorted(videos), pa.string()))
                ids = set(pc.filter(tracks["track_id"], mask).to_pylist())
            return assemble.assemble(name, self.committed[name][shard], parts, ("track_id", ids))
        return assemble.assemble(name, self.committed[name][shard], parts, ("video_id", videos))

    def stage_input(self, stage: Stage, videos: set[str]) -> pa.Table:
        """The stage's level rows of `videos`, with the ancestor columns it requires (and its
        children nested when it declares `requires_children`)."""
        rows = pa.concat_tables([self.table(stage.level, s) for s in self.wave])
        rows = rows.filter(pc.is_in(rows["video_id"], pa.array(sorted(videos), pa.string())))
        ancestors = {t: pa.concat_tables([self.table(t, s) for s in self.wave])
                     for t in ("videos", "clips") if t != stage.level}
        after = [f"{a}_status" for a in stage.after]
        rows = assemble.join_ancestors(rows, stage.level, ancestors, [*stage.requires, *after])
        child_columns = list(getattr(stage, "requires_children", ()))
        if child_columns:
            frames = pa.concat_tables([self.table("frames", s) for s in self.wave])
            rows = assemble.nest_children(rows, stage.level, frames, child_columns)
        keep = [*schema.KEYS[stage.level], "video_id", "shard", *stage.requires, *after]
        if child_columns:
            keep.append(schema.CHILDREN[stage.level])
        return rows.select([c for c in dict.fromkeys(keep) if c in rows.column_names])

    def write_blocked(self, stage: Stage, blocked: pa.Table) -> None:
        """Rows whose prerequisite stage did not succeed: `skipped` with the reason."""
        rows = [stage.failed_row(blocked_reason(stage, row), status=SKIPPED) for row in blocked.to_pylist()]
        write_output(rows_with_keys(stage, rows, blocked), stage.name, stage.level, self.staging)

    def outcome(self, stage: Stage) -> tuple[Counter, int]:
        """Statuses of the stage's rows and how many child rows it created in this wave."""
        statuses: Counter = Counter()
        children = 0
        for shard in self.wave:
            folder = shard_folder(self.staging, shard)
            part = assemble.read_parts(folder / stage.level, stage.name)
            if part is not None:
                statuses.update(part[f"{stage.covers()[0]}_status"].drop_null().to_pylist())
            for child in created_tables(stage):
                child_part = assemble.read_parts(folder / child, stage.name)
                if child_part is not None and child not in ("frames", stage.level):
                    children += child_part.num_rows
        return statuses, children

    def commit(self, fingerprints: dict[str, str]) -> None:
        """Commit every shard of the wave (tables, then media, then the record), then clean up."""
        for shard in self.wave:
            tables = {t: self.table(t, shard) for t in ROW_TABLES}
            tables = {t: v for t, v in tables.items() if v.num_rows or self.committed[t][shard].num_rows}
            media_root = shard_folder(self.staging, shard)
            media = {p.relative_to(media_root).as_posix(): p
                     for p in (media_root / layout.MEDIA).rglob("*") if p.is_file()}
            previous = read_commits(self.root).get(shard)
            merged = {**(previous.fingerprints if previous else {}), **fingerprints}
            commit_shard(self.root, shard, tables, media, merged,
                         keep_media=previous.media if previous else None)
        shutil.rmtree(self.staging, ignore_errors=True)
