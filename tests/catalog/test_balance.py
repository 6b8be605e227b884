"""`balance`: even kept seconds per emotion or intensity band, deterministic per seed."""

from __future__ import annotations

import pyarrow as pa
import pytest

import catalog
from catalog.select import INTENSITY_BANDS


def _selected(labels: list[str | None], seconds: list[float], intensity=None, keep=None) -> pa.Table:
    n = len(labels)
    keep = [True] * n if keep is None else keep
    return pa.table({
        "track_id": [f"t{i:03d}" for i in range(n)],
        "start_s": [0.0] * n,
        "end_s": seconds,
        "emotion_label": labels,
        "intensity": pa.array(intensity if intensity is not None else [None] * n, pa.float32()),
        "drop_reason": pa.array([None if k else "face too small" for k in keep], pa.string()),
        "keep": keep,
    })


def _kept_seconds(table: pa.Table, column: str) -> dict:
    out: dict = {}
    for r in table.to_pylist():
        if r["keep"]:
            out[r[column]] = out.get(r[column], 0.0) + r["end_s"]
    return out


def test_balance_by_emotion_caps_every_label_at_the_smallest_total():
    # happy: 10 x 2 s, neutral: 5 x 2 s, sad: 3 x 2 s (6 s, the smallest), one already dropped
    labels = ["happy"] * 10 + ["neutral"] * 5 + ["sad"] * 3 + ["sad"]
    table = _selected(labels, [2.0] * 19, keep=[True] * 18 + [False])
    out = catalog.balance(table, "emotion")
    assert _kept_seconds(out, "emotion_label") == {"happy": 6.0, "neutral": 6.0, "sad": 6.0}
    reasons = out.column("drop_reason").to_pylist()
    assert reasons.count("balanced out (happy)") == 7 and reasons.count("balanced out (neutral)") == 2
    assert reasons[-1] == "face too small"  # select's verdicts stay
    # deterministic per seed; another seed keeps other happy tracks
    assert catalog.balance(table, "emotion").equals(out)
    other = catalog.balance(table, "emotion", seed=1)
    assert _kept_seconds(other, "emotion_label") == {"happy": 6.0, "neutral": 6.0, "sad": 6.0}
    assert other.column("keep").to_pylist() != out.column("keep").to_pylist()


def test_balance_with_a_cap_and_unlabelled_tracks():
    table = _selected(["happy", "happy", "sad", None], [3.0, 4.0, 10.0, 5.0])
    out = catalog.balance(table, "emotion", max_seconds=4.0)
    rows = {r["track_id"]: r for r in out.to_pylist()}
    assert rows["t003"]["drop_reason"] == "no emotion to balance by"
    assert rows["t002"]["drop_reason"] == "balanced out (sad)"  # 10 s > 4 s
    assert sum(r["keep"] for r in rows.values() if r["emotion_label"] == "happy") == 1


def test_balance_by_intensity_bands():
    # bands: [0, 0.5), [0.5, 1), [1, 2), [2, inf)
    assert INTENSITY_BANDS == (0.5, 1.0, 2.0)
    intensity = [0.1, 0.2, 0.3, 0.7, 1.5, 1.6, 2.5, 3.0]
    table = _selected(["x"] * 8, [1.0] * 8, intensity=intensity)
    out = catalog.balance(table, "intensity")
    kept = [r["intensity"] for r in out.to_pylist() if r["keep"]]
    assert len(kept) == 4  # one per band (the 0.5-1 band has a single track)
    assert sorted(sum(v >= e for e in INTENSITY_BANDS) for v in kept) == [0, 1, 2, 3]


def test_balance_by_must_be_known():
    with pytest.raises(catalog.SelectionError, match="balance_by"):
        catalog.Thresholds.from_dict({"balance_by": "age"})
    with pytest.raises(catalog.SelectionError, match="balance_by"):
        catalog.balance(_selected(["happy"], [1.0]), "age")
