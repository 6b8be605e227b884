"""select with expression vectors of two backends on one person, and person-chunked select."""

from __future__ import annotations

import importlib

import numpy as np
import pyarrow as pa
import pytest

import catalog
from catalog import schema

select_module = importlib.import_module("catalog.select")  # `catalog.select` is the function


def _row(track_id, person, backend, vector, label="happy"):
    return {"track_id": track_id, "person_id": person, "faces_status": "ok",
            "face_px_median": 200.0, "start_s": 0.0, "end_s": 3.0,
            "expression_status": "ok", "expression_backend": backend,
            "expression_dim": len(vector), "expression_mean": vector,
            "expression_magnitude": float(np.linalg.norm(vector)), "emotion_label": label}


def _two_backends() -> pa.Table:
    """Person P: three 3dmm tracks (3-d) and three deca tracks (5-d); P's neutral track in each."""
    rows = [
        _row("a0", "P", "3dmm", [0.0, 0.0, 0.0], "neutral"),
        _row("a1", "P", "3dmm", [1.0, 0.0, 0.0]),
        _row("a2", "P", "3dmm", [0.0, 3.0, 0.0]),
        _row("d0", "P", "deca", [1.0, 1.0, 1.0, 1.0, 1.0], "neutral"),
        _row("d1", "P", "deca", [1.0, 1.0, 1.0, 1.0, 5.0]),
        _row("d2", "P", "deca", [1.0, 1.0, 1.0, 1.0, 3.0]),
    ]
    return pa.Table.from_pylist(rows, schema=schema.table_schema("tracks"))


def test_intensity_with_two_backends_is_refused_without_a_backend():
    tracks = _two_backends()
    with pytest.raises(catalog.SelectionError, match="several backends"):
        catalog.select(None, catalog.Thresholds(min_intensity=0.5), tracks=tracks)
    with pytest.raises(catalog.SelectionError, match="several backends"):
        catalog.select(None, catalog.Thresholds(balance_by="intensity"), tracks=tracks)


def test_intensity_per_backend_never_mixes_vectors():
    rows = {r["track_id"]: r for r in catalog.select(None, tracks=_two_backends()).to_pylist()}
    # 3dmm: distances from the neutral a0 are 1 and 3 (median 2) -> 0.5, 1.5
    # deca: distances from the neutral d0 are 4 and 2 (median 3) -> 4/3, 2/3
    expected = {"a0": 0.0, "a1": 0.5, "a2": 1.5, "d0": 0.0, "d1": 4 / 3, "d2": 2 / 3}
    assert {k: round(v["intensity"], 5) for k, v in rows.items()} == \
        {k: round(v, 5) for k, v in expected.items()}
    assert all(r["keep"] for r in rows.values())  # no expression threshold: nothing dropped


def test_chosen_backend_drops_the_others_with_a_reason():
    t = catalog.Thresholds(expression_backend="3dmm", min_intensity=1.0)
    rows = {r["track_id"]: r for r in catalog.select(None, t, tracks=_two_backends()).to_pylist()}
    for deca in ("d0", "d1", "d2"):
        assert rows[deca]["drop_reason"] == "expression from deca, not 3dmm"
        assert rows[deca]["intensity"] is None
    assert rows["a2"]["keep"] and rows["a2"]["intensity"] == pytest.approx(1.5)
    assert rows["a1"]["drop_reason"] == "intensity too low"
    assert rows["a0"]["drop_reason"] == "intensity too low"


def test_two_dimensions_of_one_backend_are_refused():
    tracks = pa.Table.from_pylist([_row("x", "P", "3dmm", [1.0, 0.0]), _row("y", "Q", "3dmm", [1.0, 0.0, 2.0])],
                                  schema=schema.table_schema("tracks"))
    with pytest.raises(catalog.SelectionError, match="several dimensions"):
        catalog.select(None, catalog.Thresholds(expression_backend="3dmm", min_intensity=0.1),
                       tracks=tracks)


def test_person_chunks_give_the_same_verdicts_as_one_chunk(monkeypatch):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        person = None if i % 7 == 0 else f"p{i % 9}"
        vec = rng.normal(size=3).round(3).tolist()
        rows.append(_row(f"t{i:02d}", person, "3dmm", vec, "neutral" if i % 5 == 0 else "happy"))
        rows[-1]["face_px_median"] = float(rng.uniform(50, 300))
    tracks = pa.Table.from_pylist(rows, schema=schema.table_schema("tracks"))
    t = catalog.Thresholds(min_intensity=0.7, max_intensity=1.6)
    whole = catalog.select(None, t, tracks=tracks)
    monkeypatch.setattr(select_module, "SELECT_CHUNK_ROWS", 4)
    chunks = list(select_module._person_chunks(tracks))
    assert len(chunks) > 5
    persons = [set(tracks["person_id"].take(c).drop_null().to_pylist()) for c in chunks]
    assert all(not (a & b) for i, a in enumerate(persons) for b in persons[i + 1:])  # never split
    chunked = catalog.select(None, t, tracks=tracks)
    assert chunked["drop_reason"].to_pylist() == whole["drop_reason"].to_pylist()
    assert chunked["intensity"].to_pylist() == whole["intensity"].to_pylist()
    assert "intensity too low" in whole["drop_reason"].to_pylist()


def test_bounded_scores_count_only_the_rise_above_the_neutral():
    """blendshapes scores in [0, 1]: a component below the person's neutral adds nothing;
    a mostly turned-away track (pose fraction < 0.5) is never the neutral."""
    rows = [
        _row("n", "P", "blendshapes", [0.2, 0.2, 0.0], "neutral"),
        _row("up", "P", "blendshapes", [0.2, 0.6, 0.0]),  # rise 0.4
        _row("down", "P", "blendshapes", [0.0, 0.6, 0.0]),  # rise 0.4 (the drop counts zero)
        _row("b0", "Q", "blendshapes", [0.0, 0.0, 0.0]),  # Q's least expressive, but turned away
        _row("b1", "Q", "blendshapes", [0.1, 0.0, 0.0]),
        _row("b2", "Q", "blendshapes", [0.1, 0.3, 0.0]),
        _row("old", "R", "3dmm", [0.0, -1.0, 0.0], "neutral"),  # 3dmm: signed distances
        _row("old1", "R", "3dmm", [0.0, 1.0, 0.0]),
    ]
    for r in rows:
        r["expression_pose_ok_fraction"] = 0.1 if r["track_id"] == "b0" else None
    tracks = pa.Table.from_pylist(rows, schema=schema.table_schema("tracks"))
    got = {r["track_id"]: r["intensity"] for r in catalog.select(
        None, catalog.Thresholds(expression_backend="blendshapes"), tracks=tracks).to_pylist()}
    assert got["up"] == pytest.approx(got["down"]) and got["n"] == 0.0
    assert got["b1"] == 0.0 and got["b2"] > 0  # b1 is Q's neutral, not b0
    assert got["old"] is None  # another backend: dropped, no intensity
    old = {r["track_id"]: r["intensity"] for r in catalog.select(
        None, catalog.Thresholds(expression_backend="3dmm"), tracks=tracks).to_pylist()}
    assert old["old"] == 0.0 and old["old1"] == pytest.approx(1.0)


def test_the_faces_gate_name_in_select_names_the_selection_threshold():
    with pytest.raises(select_module.SelectionError,
                       match="min_face_px is the faces stage's gate.*min_face_px_median"):
        catalog.Thresholds.from_dict({"min_face_px": 128})
    assert catalog.Thresholds.from_dict({"min_face_px_median": 128}).min_face_px_median == 128
