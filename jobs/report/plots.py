"""Charts for the curation report (matplotlib, Agg, no pyplot state), returned as PNG bytes.

Each distribution shows all tracks the faces stage finished and the tracks `select` keeps, with
the threshold that applies drawn as a dashed line. Inputs are numpy arrays; nulls are dropped.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.select import Thresholds

ALL_COLOR, KEPT_COLOR, LOST_COLOR, LINE_COLOR = "#9aa7b8", "#1f77b4", "#d95f02", "#c0392b"
DPI = 90


def _figure(width: float = 4.2, height: float = 2.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # heavy: loaded on use
    from matplotlib.figure import Figure  # heavy: loaded on use

    # fixed margins: a layout engine would draw every figure twice
    fig = Figure(figsize=(width, height), dpi=DPI)
    fig.subplots_adjust(left=0.14, right=0.97, top=0.9, bottom=0.18)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def values(column: pa.ChunkedArray, mask: np.ndarray | None = None) -> np.ndarray:
    """float64[K]: the column's non-null values (where `mask`, bool[N], is true)."""
    array = column.to_numpy(zero_copy_only=False) if column.null_count == 0 else \
        pc.fill_null(pc.cast(column, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
    array = array.astype(np.float64)
    if mask is not None:
        array = array[mask]
    return array[~np.isnan(array)]


def histogram(title: str, unit: str, series: list[tuple[str, np.ndarray, str]],
              lines: list[float] = (), bins: np.ndarray | int = 40, log_x: bool = False) -> bytes:
    """A step histogram of each (label, values, color) series with dashed threshold `lines`."""
    fig = _figure()
    ax = fig.add_subplot()
    data = [v for _, v, _ in series if len(v)]
    if not data:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    else:
        lo = min(float(v.min()) for v in data)
        hi = max(float(v.max()) for v in data)
        if isinstance(bins, int):
            if log_x and lo > 0:
                bins = np.geomspace(lo, max(hi, lo * 1.01), bins + 1)
            else:
                bins = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
        for label, v, color in series:
            counts, edges = np.histogram(v, bins=bins)
            ax.stairs(counts, edges, label=f"{label} ({len(v):,})", color=color,
                      fill=color == ALL_COLOR, alpha=0.6 if color == ALL_COLOR else 1.0, linewidth=1.4)
        if log_x and lo > 0:
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # heavy: on use

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
    for x in lines:
        ax.axvline(x, color=LINE_COLOR, linestyle="--", linewidth=1)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(unit, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.tick_params(labelsize=8)
    if data:
        ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def bars(title: str, labels: list[str], series: list[tuple[str, list[float], str]], unit: str = "count",
         horizontal: bool = False, height: float = 2.8) -> bytes:
    """Grouped bars: one group per label, one bar per (name, values, color) series."""
    fig = _figure(height=height)
    if horizontal:
        fig.subplots_adjust(left=0.36)
    else:
        fig.subplots_adjust(bottom=0.28)
    ax = fig.add_subplot()
    pos = np.arange(len(labels))
    width = 0.8 / max(1, len(series))
    for k, (name, vals, color) in enumerate(series):
        offset = pos + (k - (len(series) - 1) / 2) * width
        if horizontal:
            ax.barh(offset, vals, height=width, color=color, label=name)
        else:
            ax.bar(offset, vals, width=width, color=color, label=name)
    if horizontal:
        ax.set_yticks(pos, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(unit, fontsize=9)
    else:
        ax.set_xticks(pos, labels, fontsize=8, rotation=30, ha="right")
        ax.set_ylabel(unit, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    return _png(fig)


def funnel_chart(steps: list[dict], compare: list[dict] | None = None) -> bytes:
    """Hours at each funnel step (current thresholds, and the compared set when given)."""
    labels = [s["level"] for s in steps]
    series = [("current thresholds", [s["hours"] for s in steps], KEPT_COLOR)]
    if compare:
        series.append(("compared thresholds", [s["hours"] for s in compare], LOST_COLOR))
    return bars("Funnel (hours)", labels, series, unit="hours", horizontal=True, height=3.0)


def distributions(tracks: pa.Table, clips: pa.Table, keep: pa.Array, t: Thresholds) -> list[tuple[str, bytes]]:
    """(title, PNG bytes) for every distribution the report shows."""
    done = pc.fill_null(pc.equal(tracks["faces_status"], "ok"), False).to_numpy(zero_copy_only=False)
    kept = keep.to_numpy(zero_copy_only=False).astype(bool)

    def pair(name: str) -> list[tuple[str, np.ndarray, str]]:
        return [("faces ok", values(tracks[name], done), ALL_COLOR), ("kept", values(tracks[name], kept), KEPT_COLOR)]

    out = [
        ("Clip duration", histogram("Clip duration", "s", [("clips", values(clips["duration_s"]), ALL_COLOR)],
                                    log_x=True)),
        ("Face size", histogram("Face size (median box side)", "px", pair("face_px_median"),
                                lines=[t.min_face_px_median], log_x=True)),
        ("Head yaw", histogram("Head yaw (track mean)", "deg", pair("yaw_mean"),
                               lines=[-t.max_abs_yaw_deg, t.max_abs_yaw_deg])),
        ("Head pitch and roll", histogram("Head pitch and roll (track mean)", "deg", [
            ("pitch", values(tracks["pitch_mean"], done), ALL_COLOR),
            ("roll", values(tracks["roll_mean"], done), LOST_COLOR)])),
        ("Head speed", histogram("Head rotation speed", "deg/s", pair("head_speed_deg_s"))),
        ("Speech ratio", histogram("Speech ratio", "fraction of the track with voice", pair("speech_ratio"),
                                   lines=[t.min_speech_ratio], bins=np.linspace(0, 1, 41))),
    ]
    backends = [b for b in pc.unique(tracks["lip_sync_backend"]).to_pylist() if b]
    for backend in sorted(backends):
        mask = pc.fill_null(pc.equal(tracks["lip_sync_backend"], backend), False).to_numpy(zero_copy_only=False)
        rule = t.lip_sync_rules.get(backend, {})
        limit = rule.get("max_abs_offset_frames")
        out.append((f"Sync offset ({backend})", histogram(
            f"Sync offset ({backend})", "frames at 25 fps (positive: audio leads)",
            [("measured", values(tracks["lip_sync_offset_frames"], done & mask), ALL_COLOR),
             ("kept", values(tracks["lip_sync_offset_frames"], kept & mask), KEPT_COLOR)],
            lines=[-limit, limit] if limit is not None else [], bins=np.arange(-15.5, 16.5, 1.0))))
        out.append((f"Sync confidence ({backend})", histogram(
            f"Sync confidence ({backend})", f"{backend} confidence",
            [("measured", values(tracks["lip_sync_confidence"], done & mask), ALL_COLOR),
             ("kept", values(tracks["lip_sync_confidence"], kept & mask), KEPT_COLOR)],
            lines=[rule["min_confidence"]] if "min_confidence" in rule else [])))
    for backend in sorted(b for b in pc.unique(tracks["expression_backend"]).to_pylist() if b):
        mask = pc.fill_null(pc.equal(tracks["expression_backend"], backend), False).to_numpy(zero_copy_only=False)
        out.append((f"Expression magnitude ({backend})", histogram(
            f"Expression magnitude ({backend})", "mean L2 norm of the expression vector",
            [("measured", values(tracks["expression_magnitude"], done & mask), ALL_COLOR),
             ("kept", values(tracks["expression_magnitude"], kept & mask), KEPT_COLOR)])))
    counts = pc.value_counts(tracks["emotion_label"].drop_null()).to_pylist()
    kept_counts = {c["values"]: c["counts"] for c in pc.value_counts(
        tracks["emotion_label"].filter(keep).drop_null()).to_pylist()}
    labels = sorted((c["values"] for c in counts), key=lambda x: -{c["values"]: c["counts"] for c in counts}[x])
    all_counts = {c["values"]: c["counts"] for c in counts}
    out.append(("Emotion classes", bars("Dominant emotion per track", labels, [
        ("all tracks", [all_counts[x] for x in labels], ALL_COLOR),
        ("kept", [kept_counts.get(x, 0) for x in labels], KEPT_COLOR)])))
    return out
