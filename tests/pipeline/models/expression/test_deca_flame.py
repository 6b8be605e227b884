"""DECA and FLAME loaders on tiny files of the real formats: vertices equal a numpy computation."""

from __future__ import annotations

import pickle
import sys
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.models.expression import deca as deca_mod
from pipeline.models.expression.flame import load_flame_pkl
from pipeline.models.registry import MissingWeightsError
from pipeline.models.resnet import build_resnet

V, N_SHAPE_ALL, N_EXP_ALL = 14, 300, 100


def _fake_chumpy():
    """A stand-in `chumpy.ch.Ch` so the test pickles objects the way FLAME's file stores them."""
    mod = types.ModuleType("chumpy.ch")

    class Ch:
        def __init__(self, x):
            self.x = x
            self._cache = {}

        def __getstate__(self):
            return {"x": self.x, "_dirty_vars": set()}

    Ch.__module__ = "chumpy.ch"
    Ch.__qualname__ = "Ch"
    mod.Ch = Ch
    return mod


def write_tiny_flame(path, rng):
    import scipy.sparse

    mod = _fake_chumpy()
    sys.modules["chumpy"], sys.modules["chumpy.ch"] = types.ModuleType("chumpy"), mod
    try:
        weights = rng.uniform(size=(V, 5))
        model = {
            "v_template": mod.Ch(rng.normal(size=(V, 3)) * 0.1),
            "shapedirs": mod.Ch(rng.normal(size=(V, 3, N_SHAPE_ALL + N_EXP_ALL)) * 1e-3),
            "posedirs": rng.normal(size=(V, 3, 36)) * 1e-2,
            "J_regressor": scipy.sparse.csc_matrix(rng.uniform(size=(5, V)) / V),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]]),
            "weights": mod.Ch(weights / weights.sum(1, keepdims=True)),
            "f": np.array([[0, 1, 2], [2, 3, 4]], np.uint32),
            "bs_type": "lrotmin", "bs_style": "lbs",
        }
        with open(path, "wb") as f:
            pickle.dump(model, f, protocol=2)
    finally:
        del sys.modules["chumpy"], sys.modules["chumpy.ch"]


def numpy_flame(m, shape, exp, pose):
    """FLAME by hand for one sample: blendshapes, pose correctives, LBS over the kinematic tree."""
    def rod(v):
        a = np.linalg.norm(v + 1e-8)
        k = v / a
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K

    sd = m["shapedirs"]
    v = m["v_template"] + sd[:, :, :100] @ shape + sd[:, :, 300:350] @ exp
    J = m["J_regressor"] @ v
    full = np.concatenate([pose[:3], np.zeros(3), pose[3:6], np.zeros(6)]).reshape(5, 3)
    R = [rod(p) for p in full]
    feat = np.concatenate([(r - np.eye(3)).ravel() for r in R[1:]])
    v = v + (m["posedirs"] @ feat)
    parents = [-1, 0, 1, 1, 1]
    G = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = R[j]
        local[:3, 3] = J[j] - (J[parents[j]] if j else 0)
        G.append(local if j == 0 else G[parents[j]] @ local)
    A = []
    for j in range(5):
        a = G[j].copy()
        a[:3, 3] -= G[j][:3, :3] @ J[j]
        A.append(a)
    out = np.zeros_like(v)
    for i in range(V):
        T = sum(m["weights"][i, j] * A[j] for j in range(5))
        out[i] = (T @ np.append(v[i], 1))[:3]
    return out


@pytest.fixture()
def model_root(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    folder = tmp_path / "expression" / "deca"
    folder.mkdir(parents=True)
    write_tiny_flame(folder / "generic_model.pkl", rng)
    torch.manual_seed(0)
    resnet = build_resnet(width=4)  # the real depth (3-4-6-3) at a tiny width
    feat = resnet.num_features
    state = {f"encoder.{k}": v for k, v in resnet.state_dict().items()}
    state.update({"layers.0.weight": torch.randn(16, feat) * 0.1, "layers.0.bias": torch.zeros(16),
                  "layers.2.weight": torch.randn(236, 16) * 0.1, "layers.2.bias": torch.zeros(236)})
    torch.save({"E_flame": state, "E_detail": {}, "D_detail": {}}, folder / "deca_model.tar")
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    return folder


def test_flame_vertices_equal_numpy(model_root):
    m = load_flame_pkl(model_root / "generic_model.pkl")
    enc = deca_mod.DecaEncoder.from_model_root()
    rng = np.random.default_rng(1)
    codes = {"shape": rng.normal(size=(2, 100)), "exp": rng.normal(size=(2, 50)),
             "pose": rng.normal(size=(2, 6)) * 0.3}
    verts = enc.vertices(codes)
    assert verts.shape == (2, V, 3)
    for b in range(2):
        ref = numpy_flame(m, codes["shape"][b], codes["exp"][b], codes["pose"][b])
        np.testing.assert_allclose(verts[b], ref, atol=1e-5)


def test_deca_encoder_loads_and_matches_its_state_dict(model_root):
    enc = deca_mod.DecaEncoder.from_model_root()
    ckpt = torch.load(model_root / "deca_model.tar", weights_only=False)["E_flame"]
    x = np.random.default_rng(2).uniform(size=(2, 3, 224, 224)).astype(np.float32)
    codes = enc.encode(x)
    assert {k: v.shape[1] for k, v in codes.items()} == dict(deca_mod.CODE_SIZES)
    # the MLP head recomputed by hand from the checkpoint on the encoder's features
    feats = enc.net.encoder(torch.from_numpy(x)).detach().numpy()
    h = np.maximum(feats @ ckpt["layers.0.weight"].numpy().T + ckpt["layers.0.bias"].numpy(), 0)
    out = h @ ckpt["layers.2.weight"].numpy().T + ckpt["layers.2.bias"].numpy()
    np.testing.assert_allclose(codes["exp"], out[:, 150:200], atol=1e-5)
    np.testing.assert_allclose(codes["pose"], out[:, 200:206], atol=1e-5)
    # and the features are a global average over a 7x7 map at 224 px (ResNet-50 geometry)
    assert feats.shape == (2, 4 * 8 * 4)


def test_deca_track_and_missing_weights(model_root, tmp_path, monkeypatch):
    enc = deca_mod.DecaEncoder.from_model_root()
    frames = np.random.default_rng(3).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    lm = np.tile(np.stack(np.meshgrid(np.linspace(16, 48, 17), np.linspace(16, 48, 4)), -1)
                 .reshape(-1, 2)[:68], (3, 1, 1)).astype(np.float32)
    lm[1] = np.nan
    out = enc.encode_track(frames, lm)
    assert np.isnan(out["exp"][1]).all() and np.isfinite(out["exp"][[0, 2]]).all()
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path / "empty"))
    with pytest.raises(MissingWeightsError, match="expression/deca/deca_model.tar"):
        deca_mod.DecaEncoder.from_model_root()
