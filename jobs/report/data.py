"""The curation report's numbers: funnel, statuses and errors, distributions, timings, models.

Reads only the columns it needs and aggregates with pyarrow.compute and numpy, so a catalog of a
million tracks fits in a few hundred MB. Thresholds are applied by `catalog.select` itself (which
works in chunks that never split a person), so the funnel is select's verdict.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.manifest import read_manifest
from catalog.read import read_table
from catalog.select import (
    TRACK_COLUMNS,
    SelectionError,
    Thresholds,
    balance,
    select,
    thresholds_with,
)

log = logging.getLogger(__name__)

HOURS = 3600.0
# track columns the report reads besides select's (distributions, samples)
EXTRA_TRACK_COLUMNS = ["pitch_mean", "roll_mean", "head_speed_deg_s", "faces_error",
                       "audio_error", "lip_sync_error", "expression_error", "emotion_error"]
TRACK_STAGES = ("faces", "audio", "lip_sync", "expression", "emotion")


# ---------------------------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------------------------
def parse_overrides(items: list[str]) -> dict:
    """`["min_face_px_median=128", "emotions=['happy']", "lip_sync_rules.syncnet.min_confidence=4"]`
    -> a dict; values are TOML scalars or arrays (bare words are strings)."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SelectionError(f"expected KEY=VALUE for a threshold, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def current_thresholds(manifest: dict) -> Thresholds:
    """The job spec's `[select]` thresholds when it has them, else select's defaults."""
    return Thresholds.from_dict(dict(manifest.get("job_spec", {}).get("select", {})))


# ---------------------------------------------------------------------------------------------
# select in person-aligned chunks
# ---------------------------------------------------------------------------------------------
def read_tracks(root: Path) -> pa.Table:
    """The track columns the report needs (select's plus EXTRA_TRACK_COLUMNS)."""
    return read_table(root, "tracks", columns=TRACK_COLUMNS + EXTRA_TRACK_COLUMNS)


def select_verdicts(tracks: pa.Table, thresholds: Thresholds) -> tuple[pa.Array, pa.Array]:
    """(keep: bool[N], drop_reason: string[N]) in `tracks` order: `catalog.select` (which works in
    chunks that never split a person), then `balance` over the whole catalog when asked."""
    if tracks.num_rows == 0:
        return pa.array([], pa.bool_()), pa.array([], pa.string())
    needed = tracks.select([c for c in TRACK_COLUMNS if c in tracks.column_names])
    selected = select(None, thresholds, tracks=needed, with_intensity=False)
    if thresholds.balance_by is not None:  # balancing is corpus-wide: after all the chunks
        selected = balance(selected, thresholds.balance_by, thresholds.balance_max_seconds,
                           thresholds.balance_seed)
    drop = selected["drop_reason"].combine_chunks()
    return pc.is_null(drop), drop


# ---------------------------------------------------------------------------------------------
# funnel
# ---------------------------------------------------------------------------------------------
def _sum(values) -> float:
    total = pc.sum(values).as_py() if len(values) else None
    return float(total or 0.0)


def _group(table: pa.Table, by: str, weight: str) -> dict[str, dict]:
    """{value: {count, hours}} of `table` grouped by column `by`, hours from column `weight` (s)."""
    if table.num_rows == 0:
        return {}
    grouped = table.select([by, weight]).group_by(by).aggregate([(weight, "sum"), ([], "count_all")])
    out = {}
    for row in grouped.to_pylist():
        total = row[f"{weight}_sum"]  # null when every value is null (duration unknown)
        out[str(row[by])] = {"count": int(row["count_all"]),
                             "hours": None if total is None else float(total) / HOURS}
    return out


def funnel(videos: pa.Table, clips: pa.Table, tracks: pa.Table, keep: pa.Array,
           drop: pa.Array, refused: str | None = None) -> list[dict]:
    """The funnel steps: each has level, count, hours and `lost` [{reason, count, hours}] between
    the previous step and it. Hours: video/clip duration_s, track end_s - start_s. When select
    `refused` the catalog, the last step has no count and its one loss says why."""
    steps: list[dict] = []
    vdur = pc.fill_null(videos["duration_s"], 0.0)
    steps.append({"level": "input videos", "count": videos.num_rows, "hours": _sum(vdur) / HOURS,
                  "lost": []})
    ingested = pc.equal(videos["ingest_status"], "ok")
    lost = []
    for status in ("skipped", "failed"):
        mask = pc.fill_null(pc.equal(videos["ingest_status"], status), False)
        part = videos.filter(mask)
        lost += _reasons(part, "ingest_error", "duration_s", f"ingest {status}",
                         duplicates=status == "skipped" and "duplicate_of" in part.column_names)
    lost += _null_status(videos, "ingest_status", "duration_s", "ingest")
    ok_videos = videos.filter(pc.fill_null(ingested, False))
    steps.append({"level": "videos ingested", "count": ok_videos.num_rows,
                  "hours": _sum(pc.fill_null(ok_videos["duration_s"], 0.0)) / HOURS, "lost": lost})
    scened = ok_videos.filter(pc.fill_null(pc.equal(ok_videos["scenes_status"], "ok"), False))
    lost = _status_losses(ok_videos, "scenes", "duration_s")
    steps.append({"level": "videos split into clips", "count": scened.num_rows,
                  "hours": _sum(pc.fill_null(scened["duration_s"], 0.0)) / HOURS, "lost": lost})
    steps.append({"level": "clips", "count": clips.num_rows,
                  "hours": _sum(clips["duration_s"]) / HOURS, "lost": []})
    faced = clips.filter(pc.fill_null(pc.equal(clips["faces_status"], "ok"), False))
    steps.append({"level": "clips with faces", "count": faced.num_rows,
                  "hours": _sum(faced["duration_s"]) / HOURS,
                  "lost": _status_losses(clips, "faces", "duration_s")})
    tdur = pc.subtract(tracks["end_s"], tracks["start_s"])
    track_hours = _sum(tdur) / HOURS
    covered = covered_hours(tracks)
    steps.append({"level": "face tracks", "count": tracks.num_rows, "hours": track_hours, "lost": [
        {"reason": "clip time with no face track", "count": None, "hours": steps[-1]["hours"] - covered},
        {"reason": "gained: time where several faces are tracked at once (counted per track)",
         "count": None, "hours": covered - track_hours}]})
    if refused is not None:
        steps.append({"level": "tracks kept by select", "count": None, "hours": None, "lost": [
            {"reason": f"select refused this catalog: {refused}", "count": None, "hours": None}]})
        return steps
    reasons = pa.table({"reason": drop, "seconds": tdur})
    by_reason = _group(reasons.filter(pc.invert(keep)), "reason", "seconds")
    lost = [{"reason": r, **v} for r, v in sorted(by_reason.items(), key=lambda kv: -kv[1]["count"])]
    kept = reasons.filter(keep)
    steps.append({"level": "tracks kept by select", "count": kept.num_rows,
                  "hours": _sum(kept["seconds"]) / HOURS, "lost": lost})
    return steps


def covered_hours(tracks: pa.Table) -> float:
    """Hours of clip time inside at least one track (the union of track spans per clip)."""
    if tracks.num_rows == 0:
        return 0.0
    codes = pc.dictionary_encode(tracks["clip_id"]).combine_chunks().indices.to_numpy(zero_copy_only=False)
    start = pc.fill_null(tracks["start_s"], 0.0).to_numpy(zero_copy_only=False)
    end = np.maximum(pc.fill_null(tracks["end_s"], 0.0).to_numpy(zero_copy_only=False), start)
    base = float(max(end.max(), 0.0)) + 1.0  # shift each clip past the previous one
    order = np.lexsort((start, codes))
    s, e = start[order] + codes[order] * base, end[order] + codes[order] * base
    reach = np.maximum.accumulate(e)
    before = np.r_[-np.inf, reach[:-1]]
    return float(np.maximum(0.0, e - np.maximum(s, before)).sum() / HOURS)


def _status_losses(table: pa.Table, stage: str, weight: str) -> list[dict]:
    status = f"{stage}_status"
    lost = []
    for value in ("skipped", "failed"):
        part = table.filter(pc.fill_null(pc.equal(table[status], value), False))
        lost += _reasons(part, f"{stage}_error", weight, f"{stage} {value}")
    return lost + _null_status(table, status, weight, stage)


def _null_status(table: pa.Table, status: str, weight: str, stage: str) -> list[dict]:
    part = table.filter(pc.is_null(table[status]))
    if part.num_rows == 0:
        return []
    return [{"reason": f"{stage} not run", "count": part.num_rows,
             "hours": _sum(pc.fill_null(part[weight], 0.0)) / HOURS}]


def _reasons(part: pa.Table, error: str, weight: str, label: str, duplicates: bool = False) -> list[dict]:
    """Losses of one status, one entry per normalized error text."""
    if part.num_rows == 0:
        return []
    if duplicates:
        n_dup = pc.sum(pc.is_valid(part["duplicate_of"])).as_py() or 0
        if n_dup == part.num_rows:
            return [{"reason": f"{label}: duplicate of another input", "count": part.num_rows,
                     "hours": _sum(pc.fill_null(part[weight], 0.0)) / HOURS}]
    errors = pc.fill_null(part[error], "(no reason given)")
    normal = normalize_errors(errors)
    grouped = _group(pa.table({"reason": normal, "w": part[weight]}), "reason", "w")
    return [{"reason": f"{label}: {r}", **v}
            for r, v in sorted(grouped.items(), key=lambda kv: -kv[1]["count"])]


_NUMBER = re.compile(r"(?<![A-Za-z_\d])\d+(?:\.\d+)?")
_PATHISH = re.compile(r"(?:/[^\s:]+)+")


def normalize_errors(errors: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Error texts with paths replaced by `<path>` and numbers by `#`, so one cause groups
    together ("no face found in # frames"); computed once per distinct text."""
    encoded = pc.dictionary_encode(errors).combine_chunks() if isinstance(errors, pa.ChunkedArray) \
        else pc.dictionary_encode(errors)
    texts = encoded.dictionary.to_pylist()
    normal = [_NUMBER.sub("#", _PATHISH.sub("<path>", t))[:160] if t is not None else None for t in texts]
    return pc.take(pa.array(normal, pa.string()), encoded.indices)


# ---------------------------------------------------------------------------------------------
# statuses and errors
# ---------------------------------------------------------------------------------------------
def status_table(tables: dict[str, pa.Table]) -> list[dict]:
    """[{table, stage, counts: {status: n}, errors: [(normalized error, n, example)]}]"""
    out = []
    for name, table in tables.items():
        for field in table.schema:
            if not field.name.endswith("_status"):
                continue
            stage = field.name.removesuffix("_status")
            counts = {str(c["values"]): int(c["counts"]) for c in pc.value_counts(table[field.name]).to_pylist()}
            counts = {("not run" if k == "None" else k): v for k, v in counts.items()}
            errors = []
            error_col = f"{stage}_error"
            if error_col in table.column_names:
                present = table[error_col].drop_null()
                if len(present):
                    normal = normalize_errors(present)
                    examples: dict[str, str] = {}
                    for raw, norm in zip(pc.unique(present).to_pylist(), normalize_errors(pc.unique(present)).to_pylist()):
                        examples.setdefault(norm, raw)
                    for item in pc.value_counts(normal).to_pylist():
                        errors.append((item["values"], int(item["counts"]), examples.get(item["values"], "")))
                    errors.sort(key=lambda e: -e[1])
            out.append({"table": name, "stage": stage, "counts": counts, "errors": errors[:12]})
    return out


# ---------------------------------------------------------------------------------------------
# timings and models
# ---------------------------------------------------------------------------------------------
def timings(manifest: dict, videos: pa.Table, clips: pa.Table) -> list[dict]:
    """Per stage: rows, seconds, rows/s and media seconds per wall second (x realtime).

    The whole catalog from the timing columns (videos.scenes_seconds, clips.faces_seconds, one
    worker's time per row), and the last run from the manifest's `timings` {stage: {rows_in,
    seconds}} when present (wall time of the run's stage)."""
    out = []
    for stage, table, col in (("scenes", videos, "scenes_seconds"), ("faces", clips, "faces_seconds")):
        timed = table.filter(pc.is_valid(table[col]))
        if timed.num_rows == 0:
            continue
        seconds = _sum(timed[col])
        media_s = _sum(pc.fill_null(timed["duration_s"], 0.0))
        out.append({"stage": stage, "rows": timed.num_rows, "seconds": seconds,
                    "source": f"{col} (sum over the catalog)",
                    "rows_per_s": timed.num_rows / seconds if seconds > 0 else None,
                    "realtime": media_s / seconds if seconds > 0 else None})
    for stage, entry in (manifest.get("timings") or {}).items():
        rows, seconds = int(entry.get("rows_in", 0) or 0), float(entry.get("seconds", 0.0) or 0.0)
        out.append({"stage": stage, "rows": rows, "seconds": seconds, "source": "manifest (last run, wall)",
                    "rows_per_s": rows / seconds if seconds > 0 else None, "realtime": None})
    return out


def models(manifest: dict) -> list[dict]:
    """Every model the catalog's stages used, once per (key, version): the stages that list it
    (comma-separated), key, version, license, commercial_ok."""
    found: dict[tuple, dict] = {}
    for stage, entry in sorted(manifest.get("stages", {}).items()):
        for m in entry.get("models", []):
            item = found.setdefault((m.get("key"), m.get("version")), {
                "stages": [], "key": m.get("key"), "version": m.get("version"),
                "license": m.get("license"), "commercial_ok": bool(m.get("commercial_ok", True))})
            item["stages"].append(stage)
    out = []
    for m in sorted(found.values(), key=lambda m: m["key"] or ""):
        stages = m.pop("stages")
        out.append({"stage": ", ".join(stages), **m})
    return out


def restricted_models(manifest: dict, used: list[dict]) -> list[str]:
    names = set(manifest.get("licenses", {}).get("non_commercial_models", []))
    names.update(m["key"] for m in used if not m["commercial_ok"])
    return sorted(names)


# ---------------------------------------------------------------------------------------------
# everything
# ---------------------------------------------------------------------------------------------
def collect(root: Path, compare: list[str] | None = None) -> dict:
    """All the report's numbers (plain data), plus `tracks`, `keep` and `drop` for the plots
    and contact sheets. compare: select overrides as KEY=VALUE strings."""
    manifest = read_manifest(root)
    base = current_thresholds(manifest)
    videos = read_table(root, "videos", columns=["video_id", "uri", "duration_s", "duplicate_of",
                                                  "ingest_status", "ingest_error", "scenes_status",
                                                  "scenes_error", "scenes_seconds"])
    clips = read_table(root, "clips", columns=["clip_id", "video_id", "duration_s", "faces_status",
                                                "faces_error", "faces_seconds"])
    tracks = read_tracks(root)
    keep, drop, refused = _verdicts(tracks, base)
    data = {
        "catalog": str(root), "version": manifest.get("version"),
        "schema_version": manifest.get("schema_version"), "code_version": manifest.get("code_version"),
        "thresholds": _plain(asdict(base)), "funnel": funnel(videos, clips, tracks, keep, drop, refused),
        "select_error": refused, "statuses": status_table({
            "videos": videos.select(["ingest_status", "ingest_error", "scenes_status", "scenes_error"]),
            "clips": clips.select(["faces_status", "faces_error"]),
            "tracks": tracks.select([c for s in TRACK_STAGES for c in (f"{s}_status", f"{s}_error")]),
        }),
        "timings": timings(manifest, videos, clips), "models": models(manifest),
    }
    data["restricted_models"] = restricted_models(manifest, data["models"])
    if compare:
        other = thresholds_with(base, parse_overrides(compare))
        keep2, drop2, refused2 = _verdicts(tracks, other)
        data["compare"] = {"overrides": list(compare), "thresholds": _plain(asdict(other)),
                           "funnel": funnel(videos, clips, tracks, keep2, drop2, refused2),
                           "select_error": refused2}
        data["_keep_compare"] = keep2
    data["_tracks"], data["_keep"], data["_drop"] = tracks, keep, drop
    data["_clips"], data["_videos"] = clips, videos
    return data


def _verdicts(tracks: pa.Table, thresholds: Thresholds) -> tuple[pa.Array, pa.Array, str | None]:
    """select's verdicts, or (nothing kept, the refusal as every drop reason, the refusal) when
    select refuses the catalog (a lip-sync backend without a keep rule, mixed expression
    backends): the rest of the report is still worth reading."""
    try:
        return (*select_verdicts(tracks, thresholds), None)
    except SelectionError as exc:
        log.warning("report: select refused the catalog: %s", exc)
        n = tracks.num_rows
        return pa.array(np.zeros(n, bool)), pa.array([f"select refused: {exc}"] * n, pa.string()), str(exc)


def _plain(values: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
