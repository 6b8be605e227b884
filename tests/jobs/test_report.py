"""The curation report: its numbers against a generated catalog's ground truth, its contact sheets,
and the page in a real headless Chromium (no console errors, not blank, numbers as rendered)."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import catalog
from catalog.select import LIP_SYNC_RULES, SelectionError, Thresholds
from jobs.demo import demo_goals
from jobs.media.sources import MediaSourceError
from jobs.media.synthetic_catalog import generate_catalog
from jobs.report import data as report_data
from jobs.report import sheets as report_sheets
from jobs.report.page import write_report

select_module = importlib.import_module("catalog.select")  # `catalog.select` is the function

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian package chromium not installed")
# funnel step -> truth key
SELECT_REASONS = ("faces skipped", "faces failed", "face too small", "track too short",
                  "head turned away", "audio failed", "too little speech", "lip_sync failed",
                  "out of sync", "low sync confidence")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """10 input videos, 3 shards, real face-crop mp4s for every finished track."""
    root = tmp_path_factory.mktemp("report") / "catalog"
    try:
        truth = generate_catalog(root, n_videos=8, shards=3, seed=3, max_track_s=2.0)
    except MediaSourceError as exc:
        pytest.skip(f"real face photos unavailable: {exc}")
    return root, truth


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    """400 input videos (about 1100 tracks, every fate), no media."""
    root = tmp_path_factory.mktemp("report-large") / "catalog"
    return root, generate_catalog(root, n_videos=400, shards=5, seed=11, crops=None)


@pytest.fixture(scope="module")
def page(small, tmp_path_factory) -> Path:
    """The small catalog's report, with a compared threshold set."""
    root, _ = small
    return write_report(root, tmp_path_factory.mktemp("page") / "report.html", ["min_face_px_median=64"])


def _count(truth: dict, level: str, *fates: str) -> int:
    return sum(truth[level].get(f, {}).get("count", 0) for f in fates)


def _hours(truth: dict, level: str, *fates: str) -> float:
    return sum(truth[level].get(f, {}).get("hours", 0.0) for f in fates)


def expected_funnel(truth: dict) -> dict[str, tuple[int, float]]:
    """Funnel step -> (count, hours) from the fates the catalog was generated with."""
    all_v = tuple(truth["videos"])
    all_c, all_t = tuple(truth["clips"]), tuple(truth["tracks"])
    return {
        "input videos": (_count(truth, "videos", *all_v), _hours(truth, "videos", *all_v)),
        "videos ingested": (_count(truth, "videos", "ok", "scenes failed"),
                            _hours(truth, "videos", "ok", "scenes failed")),
        "videos split into clips": (_count(truth, "videos", "ok"), _hours(truth, "videos", "ok")),
        "clips": (_count(truth, "clips", *all_c), _hours(truth, "clips", *all_c)),
        "clips with faces": (_count(truth, "clips", "faces ok"), _hours(truth, "clips", "faces ok")),
        "face tracks": (_count(truth, "tracks", *all_t), _hours(truth, "tracks", *all_t)),
        "tracks kept by select": (_count(truth, "tracks", "keep"), _hours(truth, "tracks", "keep")),
    }


@pytest.mark.parametrize("which", ["small", "larger"])
def test_funnel_matches_generated_truth(which, request):
    root, truth = request.getfixturevalue(which)
    data = report_data.collect(root)
    steps = {s["level"]: s for s in data["funnel"]}
    for level, (count, hours) in expected_funnel(truth).items():
        assert steps[level]["count"] == count, f"{level}: report {steps[level]['count']}, truth {count}"
        assert steps[level]["hours"] == pytest.approx(hours, abs=1e-6), level
    lost = {item["reason"]: item for item in steps["tracks kept by select"]["lost"]}
    for reason in SELECT_REASONS:
        n = _count(truth, "tracks", reason)
        assert lost.get(reason, {}).get("count", 0) == n, f"drop reason {reason!r}"
        if n:
            assert lost[reason]["hours"] == pytest.approx(_hours(truth, "tracks", reason), abs=1e-6)
    ingest_lost = {i["reason"]: i["count"] for i in steps["videos ingested"]["lost"]}
    assert sum(ingest_lost.values()) == _count(truth, "videos", "duplicate", "ingest failed")
    if _count(truth, "videos", "duplicate"):
        assert ingest_lost["ingest skipped: duplicate of another input"] == _count(truth, "videos", "duplicate")


def test_statuses_and_timings_match_plain_parquet(larger):
    """Counts by status and per-stage time against pandas reading the Parquet folders directly."""
    import pandas as pd

    root, truth = larger
    data = report_data.collect(root)
    tracks = pd.read_parquet(root / "tracks", columns=["faces_status", "audio_status", "audio_error"])
    rows = {(s["table"], s["stage"]): s for s in data["statuses"]}
    assert rows["tracks", "faces"]["counts"] == {k: v for k, v in {
        "ok": int((tracks.faces_status == "ok").sum()), "skipped": int((tracks.faces_status == "skipped").sum()),
        "failed": int((tracks.faces_status == "failed").sum())}.items() if v}
    assert rows["tracks", "audio"]["counts"]["failed"] == _count(truth, "tracks", "audio failed")
    assert rows["tracks", "audio"]["errors"][0][1] == int(tracks.audio_error.notna().sum())
    videos = pd.read_parquet(root / "videos", columns=["scenes_seconds", "duration_s"])
    timed = videos[videos.scenes_seconds.notna()]
    scenes, last_run = ({t["stage"]: t for t in data["timings"] if t["source"].startswith(prefix)}["scenes"]
                        for prefix in ("scenes_seconds", "manifest"))
    assert last_run["rows"] == truth["timings"]["scenes"]["rows_in"]
    assert last_run["seconds"] == pytest.approx(truth["timings"]["scenes"]["seconds"])
    assert scenes["rows"] == len(timed) == _count(truth, "videos", "ok", "scenes failed")
    assert scenes["seconds"] == pytest.approx(timed.scenes_seconds.sum())
    assert scenes["realtime"] == pytest.approx(timed.duration_s.sum() / timed.scenes_seconds.sum())
    assert data["restricted_models"] == ["expression/3dmm", "face_landmarks/dlib68"]


def test_compare_equals_select_over_whole_catalog(larger, monkeypatch):
    """Chunked select (tiny chunks, never splitting a person) equals catalog.select on everything,
    including per-person intensity thresholds."""
    root, _ = larger
    monkeypatch.setattr(select_module, "SELECT_CHUNK_ROWS", 7)
    overrides = ["min_face_px_median=128", "min_intensity=0.8", "emotions=['happy', 'neutral', 'sad']",
                 "lip_sync_rules.av_corr.min_confidence=0.8"]
    data = report_data.collect(root, overrides)
    other = report_data.thresholds_with(Thresholds(), report_data.parse_overrides(overrides))
    assert other.lip_sync_rules["syncnet"] == LIP_SYNC_RULES["syncnet"]  # untouched rule kept
    reference = catalog.select(root, other)
    kept = data["compare"]["funnel"][-1]
    assert kept["count"] == int(np.sum(reference["keep"].to_numpy(zero_copy_only=False)))
    reasons = pa.table({"r": reference["drop_reason"]}).group_by("r").aggregate([([], "count_all")])
    expected = {r["r"]: r["count_all"] for r in reasons.to_pylist() if r["r"] is not None}
    assert {i["reason"]: i["count"] for i in kept["lost"]} == expected
    assert "intensity too low" in expected and "emotion not selected" in expected
    assert kept["count"] < data["funnel"][-1]["count"]


@pytest.mark.parametrize("by", ["emotion", "intensity"])
def test_chunked_verdicts_balance_like_the_whole_catalog(larger, monkeypatch, by):
    root, _ = larger
    monkeypatch.setattr(select_module, "SELECT_CHUNK_ROWS", 7)
    thresholds = Thresholds(balance_by=by, min_face_px_median=64)
    tracks = report_data.read_tracks(root)
    keep, drop = report_data.select_verdicts(tracks, thresholds)
    whole = catalog.balance(catalog.select(root, thresholds), by)
    expected = dict(zip(whole["track_id"].to_pylist(), whole["drop_reason"].to_pylist()))
    got = dict(zip(tracks["track_id"].to_pylist(), drop.to_pylist()))
    assert got == expected
    assert any(r and r.startswith("balanced out") for r in got.values())
    assert sum(keep.to_pylist()) == sum(whole["keep"].to_pylist()) > 0


def test_parse_overrides():
    parsed = report_data.parse_overrides(["min_face_px_median=128", "emotions=['happy']", "require_lip_sync=false",
                                          "expression_backend=3dmm", "lip_sync_rules.syncnet.min_confidence=4"])
    assert parsed == {"min_face_px_median": 128, "emotions": ["happy"], "require_lip_sync": False,
                      "expression_backend": "3dmm", "lip_sync_rules": {"syncnet": {"min_confidence": 4}}}
    with pytest.raises(SelectionError, match="KEY=VALUE"):
        report_data.parse_overrides(["min_face_px_median"])
    with pytest.raises(SelectionError, match="unknown thresholds"):
        report_data.thresholds_with(Thresholds(), {"min_face": 3})


def test_mixed_expression_backends_refused_like_select(monkeypatch):
    monkeypatch.setattr(select_module, "SELECT_CHUNK_ROWS", 1)
    rows = [{"track_id": f"t{i}", "person_id": f"p{i}", "faces_status": "ok", "face_px_median": 200.0,
             "start_s": 0.0, "end_s": 3.0, "expression_status": "ok", "expression_backend": b,
             "expression_dim": d, "expression_mean": [0.5] * d, "emotion_label": "happy"}
            for i, (b, d) in enumerate([("3dmm", 10), ("deca", 50)])]
    tracks = pa.Table.from_pylist(rows)
    keep, _ = report_data.select_verdicts(tracks, Thresholds())
    assert keep.to_pylist() == [True, True]
    with pytest.raises(SelectionError, match="several backends"):
        report_data.select_verdicts(tracks, Thresholds(min_intensity=0.5))


def test_contact_sheets_show_real_frames_and_reasons(small):
    root, _truth = small
    data = report_data.collect(root)
    tracks, keep, drop = data["_tracks"], data["_keep"], data["_drop"]
    sheets = {s.title: s for s in report_sheets.contact_sheets(root, tracks, keep, drop)}
    by_id = {r["track_id"]: r for r in tracks.to_pylist()}
    emotion = sheets["Sample tracks per emotion"].samples
    assert {by_id[s.track_id]["emotion_label"] for s in emotion} == {
        r["emotion_label"] for r in by_id.values() if r["emotion_label"] and r["crop_path"]}
    import io

    from PIL import Image

    for sample in emotion:
        assert sample.jpeg is not None, sample.note
        image = np.asarray(Image.open(io.BytesIO(sample.jpeg)))
        assert image.shape[0] == report_sheets.THUMB_PX
        assert image.shape[1] >= report_sheets.FRAMES_PER_TRACK * report_sheets.THUMB_PX * 0.9
        assert image.std() > 20  # a face photo, not a flat frame
    smallest = [by_id[s.track_id]["face_px_median"] for s in sheets["Smallest faces"].samples]
    with_crop = sorted(r["face_px_median"] for r in by_id.values() if r["crop_path"])
    assert smallest == pytest.approx(with_crop[: len(smallest)])
    failures = sheets["Failures"].samples
    failed = [r for r in by_id.values() if "failed" in (r["faces_status"], r["audio_status"],
                                                        r["lip_sync_status"], r["emotion_status"])]
    assert {s.track_id for s in failures} <= {r["track_id"] for r in failed}
    assert bool(failures) == bool(failed)
    for sample in failures:
        assert any("failed:" in line for line in sample.caption)
    sync = sheets["Least and most in sync"].samples
    least = [by_id[s.track_id]["lip_sync_confidence"] for s in sync if "least in sync (av_corr)" in s.caption]
    confs = sorted(r["lip_sync_confidence"] for r in by_id.values()
                   if r["lip_sync_backend"] == "av_corr" and r["crop_path"])
    assert least == pytest.approx(confs[: len(least)]) and least


def test_missing_crop_is_a_note_not_a_crash(tmp_path):
    tracks = pa.Table.from_pylist([{"track_id": "abc", "crop_path": "media/00000/abc/crop.mp4",
                                    "frame_count": 10, "face_px_median": 120.0, "start_s": 0.0, "end_s": 1.0}])
    (sample,) = report_sheets._samples(tmp_path, tracks, pa.array([None], pa.string()), [0])
    assert sample.jpeg is None and "missing" in sample.note and "media/00000/abc/crop.mp4" in sample.note


def test_license_banner_follows_the_manifest(small, page):
    root, _ = small
    text = page.read_text()
    assert 'id="license-banner"' in text and "face_landmarks/dlib68" in text
    from jobs.report.page import render

    data = report_data.collect(root)
    data["restricted_models"] = []
    assert 'id="license-banner"' not in render(data, [], b"", [])


# ---------------------------------------------------------------------------------------------
# the page in a real browser
# ---------------------------------------------------------------------------------------------
def chromium(url_path: Path, tmp: Path, *mode: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--window-size=1280,2000",
           *mode, url_path.resolve().as_uri()]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    """Console messages and uncaught exceptions from the page (Chromium logs them as CONSOLE)."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def rendered_funnel(dom: str) -> dict[str, tuple[int, float]]:
    """Funnel step -> (count, hours) as the browser's DOM shows them in the #funnel table."""
    table = dom.split('id="funnel"', 1)[1].split("</table>", 1)[0]
    out = {}
    for level, count, hours in re.findall(
            r'<tr data-level="([^"]+)"><td[^>]*>[^<]*</td><td class="num count"[^>]*>([\d,]*)</td>'
            r'<td class="num hours"[^>]*>([\d.,]*)</td>', table):
        out[level] = (int(count.replace(",", "")), float(hours.replace(",", "")))
    return out


@needs_chromium
def test_console_check_catches_page_errors(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body>x<script>undefinedFunction();</script></body></html>")
    done = chromium(page, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in line for line in console_errors(done.stderr)), done.stderr[-2000:]


@needs_chromium
def test_report_in_headless_chromium(small, page, tmp_path):
    _root, truth = small
    out = page
    shot = tmp_path / "shot.png"
    done = chromium(out, tmp_path, f"--screenshot={shot}")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert console_errors(done.stderr) == []
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert pixels.shape[:2] == (2000, 1280)
    assert pixels.std() > 25, "screenshot is nearly uniform"
    background = np.all(np.abs(pixels - pixels[5, 5]) < 8, axis=2)
    assert background.mean() < 0.85, "screenshot is mostly background"
    dom = chromium(out, tmp_path, "--dump-dom")
    assert console_errors(dom.stderr) == []
    shown = rendered_funnel(dom.stdout)
    expected = expected_funnel(truth)
    assert set(shown) == set(expected)
    for level, (count, hours) in expected.items():
        assert shown[level][0] == count, level
        assert shown[level][1] == pytest.approx(hours, abs=6e-4), level
    assert dom.stdout.count("data:image/jpeg;base64,") >= 5
    blob = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', dom.stdout, re.DOTALL)
    data = json.loads(blob.group(1).replace("<\\/", "</"))
    assert data["compare"]["funnel"][-1]["count"] >= data["funnel"][-1]["count"]


def test_cli_writes_the_report(small, tmp_path):
    root, _ = small
    out = tmp_path / "cli.html"
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "catalog", "report", str(root), "--out", str(out),
                           "--compare", "min_face_px_median=64"], check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and "What the compared thresholds would keep" in out.read_text()
    bad = subprocess.run([sys.executable, "-m", "jobs.cli", "catalog", "report", str(root), "--out", str(out),
                          "--compare", "min_face=64"], check=False, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown thresholds" in bad.stderr


@pytest.mark.slow
@needs_chromium
def test_demo_catalog_report(tmp_path):
    """`emoforge demo`, then its report in Chromium; the funnel matches plain Parquet reads. The
    demo's generated clip meets the demo's goals (a face in 90% of the frames, the photo's
    person, lips in sync with the speech: jobs.demo.demo_goals on the clip's evaluation).
    EMOFORGE_DEMO_CATALOG=<folder> reuses a demo catalog already built (no clip, no goals)."""
    import os

    import pandas as pd

    root = os.environ.get("EMOFORGE_DEMO_CATALOG")
    if root is None:
        done = subprocess.run([sys.executable, "-m", "jobs.cli", "demo", "--out", str(tmp_path / "demo")],
                              check=False, capture_output=True, text=True, timeout=3000)
        assert done.returncode == 0, done.stderr[-3000:]
        root = next(p.parent for p in (tmp_path / "demo").rglob("_manifest.json"))
        evaluation = json.loads((tmp_path / "demo" / "generated" / "evaluation.json").read_text())
        goals = demo_goals(evaluation["clips"][0])
        assert goals["all_met"] and goals == evaluation["demo_goals"], goals
        assert "all demo goals met: yes" in done.stdout
    root = Path(root)
    out = write_report(root, tmp_path / "demo.html")
    shot = tmp_path / "demo.png"
    run = chromium(out, tmp_path, f"--screenshot={shot}")
    assert console_errors(run.stderr) == [] and shot.is_file()
    from PIL import Image

    assert np.asarray(Image.open(shot).convert("L")).std() > 25
    dom = chromium(out, tmp_path, "--dump-dom")
    assert console_errors(dom.stderr) == []
    shown = rendered_funnel(dom.stdout)
    videos = pd.read_parquet(root / "videos", columns=["duration_s", "ingest_status", "scenes_status"])
    clips = pd.read_parquet(root / "clips", columns=["duration_s", "faces_status"])
    tracks = pd.read_parquet(root / "tracks", columns=["start_s", "end_s"])
    expected = {
        "input videos": (len(videos), videos.duration_s.sum() / 3600),
        "videos ingested": (int((videos.ingest_status == "ok").sum()),
                            videos.duration_s[videos.ingest_status == "ok"].sum() / 3600),
        "videos split into clips": (int((videos.scenes_status == "ok").sum()),
                                    videos.duration_s[videos.scenes_status == "ok"].sum() / 3600),
        "clips": (len(clips), clips.duration_s.sum() / 3600),
        "clips with faces": (int((clips.faces_status == "ok").sum()),
                             clips.duration_s[clips.faces_status == "ok"].sum() / 3600),
        "face tracks": (len(tracks), (tracks.end_s - tracks.start_s).sum() / 3600),
    }
    kept = catalog.training_index(root)
    expected["tracks kept by select"] = (kept.num_rows, sum(
        e - s for s, e in zip(kept["start_s"].to_pylist(), kept["end_s"].to_pylist())) / 3600)
    for level, (count, hours) in expected.items():
        assert shown[level][0] == count, level
        assert shown[level][1] == pytest.approx(hours, abs=6e-4), level
    assert dom.stdout.count("data:image/jpeg;base64,") >= 1  # real face crops decoded


def test_failed_videos_and_clips_become_text_cards(larger):
    root, truth = larger
    data = report_data.collect(root)
    sheets = report_sheets.contact_sheets(root, data["_tracks"], data["_keep"], data["_drop"],
                                         {"videos": data["_videos"], "clips": data["_clips"]})
    failures = {s.title: s for s in sheets}["Failures"].samples
    ingest = [s for s in failures if any(line.startswith("ingest failed:") for line in s.caption)]
    # the generator writes two ingest error texts; up to FAILURE_EXAMPLES cards for each
    assert _count(truth, "videos", "ingest failed") >= 4
    assert len(ingest) == 2 * report_sheets.FAILURE_EXAMPLES
    assert all(s.jpeg is None and "/data/in/video_" in s.caption[0] for s in ingest)
    faces = [s for s in failures if any(line.startswith("faces failed: no frames decoded") for line in s.caption)]
    assert len(faces) == min(report_sheets.FAILURE_EXAMPLES, _count(truth, "clips", "faces failed"))


def test_covered_hours_is_the_union_of_track_spans():
    spans = [("a", 1.0, 3.0), ("b", 12.0, 13.0), ("a", 0.0, 2.0), ("c", 5.0, 6.0), ("b", 10.0, 11.0),
             ("c", 4.0, 8.0), ("a", 2.5, 2.9)]
    tracks = pa.table({"clip_id": [c for c, _, _ in spans], "start_s": [s for _, s, _ in spans],
                       "end_s": [e for _, _, e in spans]})
    assert report_data.covered_hours(tracks) * 3600 == pytest.approx(3.0 + 2.0 + 4.0)


def test_funnel_face_track_losses_add_up(larger):
    root, _ = larger
    steps = {s["level"]: s for s in report_data.collect(root)["funnel"]}
    lost = {i["reason"]: i["hours"] for i in steps["face tracks"]["lost"]}
    uncovered = lost["clip time with no face track"]
    assert uncovered > 0  # the generator pads every clip beyond its tracks
    assert lost["gained: time where several faces are tracked at once (counted per track)"] < 0
    assert steps["clips with faces"]["hours"] - sum(lost.values()) == pytest.approx(steps["face tracks"]["hours"])


def test_select_refusal_is_reported_and_a_compared_rule_fixes_it(larger):
    """A lip-sync backend without a keep rule: the report says so instead of failing, and a
    compared set that adds the rule gives the same verdicts as the renamed backend's rule."""
    import pyarrow.compute as pc

    from jobs.report.page import render

    root, _ = larger
    tracks = report_data.read_tracks(root)
    renamed = tracks.set_column(tracks.schema.get_field_index("lip_sync_backend"), "lip_sync_backend",
                                pc.replace_substring(tracks["lip_sync_backend"], "av_corr", "av_new"))
    keep, _, refused = report_data._verdicts(renamed, Thresholds())
    assert "av_new" in refused and not any(keep.to_pylist())
    rule = LIP_SYNC_RULES["av_corr"]
    fixed = report_data.thresholds_with(Thresholds(), report_data.parse_overrides(
        [(f"lip_sync_rules.av_new={{min_confidence={rule['min_confidence']}, "
         f"max_abs_offset_frames={rule['max_abs_offset_frames']}}}")]))
    keep_fixed, drop_fixed, refused_fixed = report_data._verdicts(renamed, fixed)
    keep_orig, drop_orig = report_data.select_verdicts(tracks, Thresholds())
    assert refused_fixed is None and keep_fixed.equals(keep_orig) and drop_fixed.equals(drop_orig)
    data = report_data.collect(root)
    data["select_error"] = refused
    data["funnel"][-1] = {"level": "tracks kept by select", "count": None, "hours": None, "lost": []}
    page = render(data, [], b"", [])
    assert 'id="select-error"' in page and "av_new" in page
