"""`emoforge bench report`: time and peak memory of the curation report on a million tracks.

Generates (once, cached under $EMOFORGE_CACHE/bench/report-<n>) a synthetic catalog with
jobs.media.synthetic_catalog (about 360k videos, 900k clips, 1M tracks in 16 shards, a pool of real
face-crop mp4s for the contact sheets), then writes its report with a compared threshold set in a
fresh subprocess and records wall time and that process's peak resident memory (ru_maxrss).
`files`: catalog folders to report on instead of the generated one.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

from catalog.read import read_table
from jobs.media.synthetic_catalog import generate_catalog
from pipeline.models.registry import cache_root

log = logging.getLogger(__name__)

TARGET_TRACKS = 1_000_000
TRACKS_PER_VIDEO = 2.8  # expected tracks per input video under jobs.media.synthetic_catalog's fate mix
SHARDS = 16
COMPARE = ["min_face_px_median=128", "lip_sync_rules.av_corr.min_confidence=0.8"]


def generated_catalog(tracks: int = TARGET_TRACKS) -> Path:
    """The cached synthetic catalog with about `tracks` tracks (generated on first use)."""
    root = cache_root() / "bench" / f"report-{tracks}-v2"
    done = root / "_bench_done"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        n_videos = round(tracks / TRACKS_PER_VIDEO)
        generate_catalog(root, n_videos=n_videos, shards=SHARDS, seed=1, crops="pool", max_track_s=12.0)
        count = read_table(root, "tracks", columns=["track_id"]).num_rows
        done.write_text(json.dumps({"tracks": count, "seconds": time.perf_counter() - started}))
        log.info("bench report: generated %s with %d tracks in %.0f s", root, count,
                 time.perf_counter() - started)
    return root


def measure(root: Path, out_html: Path, compare: list[str]) -> dict:
    """Run write_report in a fresh Python process; returns wall seconds and peak RSS (MiB)."""
    code = ("import logging, resource, sys; logging.basicConfig(level=logging.INFO);"
            "from jobs.report import write_report;"
            "write_report(sys.argv[1], sys.argv[2], sys.argv[3:]);"
            "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(root), str(out_html), *compare],
                          check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"report on {root} failed: {done.stderr.strip()[-2000:]}")
    peak_kib = int(done.stdout.split("peak_rss_kib")[-1].split()[0])
    phases = [line.split("report: ", 1)[1] for line in done.stderr.splitlines() if "report: " in line]
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak_kib / 1024, 1),
            "html_mb": round(out_html.stat().st_size / 1e6, 2), "phases": phases}


def run(files: list[str] | None = None) -> dict:
    """Benchmark the report on `files` (catalog folders) or the generated million-track catalog."""
    roots = [Path(f) for f in files] if files else [generated_catalog()]
    result: dict = {"compare": COMPARE, "catalogs": []}
    for root in roots:
        out_html = cache_root() / "bench" / f"report-{root.name}.html"
        entry = {"catalog": str(root), "tracks": read_table(root, "tracks", columns=["track_id"]).num_rows,
                 "clips": read_table(root, "clips", columns=["clip_id"]).num_rows,
                 "videos": read_table(root, "videos", columns=["video_id"]).num_rows}
        entry.update(measure(root, out_html, COMPARE))
        entry["report"] = str(out_html)
        result["catalogs"].append(entry)
        log.info("bench report: %s: %d tracks in %.1f s, peak RSS %.0f MiB", root, entry["tracks"],
                 entry["seconds"], entry["peak_rss_mib"])
    return result
