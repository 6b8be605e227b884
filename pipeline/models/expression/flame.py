"""The FLAME layer: linear shape and expression blendshapes, pose correctives, and linear blend
skinning of 5 joints (global, neck, jaw, left eye, right eye), loaded from FLAME's generic_model.pkl.

generic_model.pkl is a Python 2 pickle whose arrays may be chumpy objects; it is read without
chumpy (chumpy classes are mapped to a stub that keeps their array, `x`). Keys used: v_template
float[V,3], shapedirs float[V,3,300+100] (300 shape then 100 expression components), posedirs
float[V,3,36], J_regressor [5,V] (dense or scipy sparse), kintree_table int[2,5], weights
float[V,5], f int[F,3].
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SHAPE_COMPONENTS = 300  # FLAME's shapedirs: 300 identity components, then expression components


class _ChumpyStub:
    """Stands in for chumpy.Ch when unpickling; keeps the pickled state."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state


class _FlameUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "chumpy":
            return _ChumpyStub
        return super().find_class(module, name)


def _to_array(value: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(value, _ChumpyStub):
        state = value.__dict__.get("_state")
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"], dtype)
        raise ValueError(f"a chumpy object without a plain array ('x'): {type(state)}")
    if hasattr(value, "toarray"):  # scipy sparse
        return np.asarray(value.toarray(), dtype)
    return np.asarray(value, dtype)


def load_flame_pkl(path: str | Path) -> dict[str, np.ndarray]:
    """FLAME's arrays from generic_model.pkl (chumpy not needed)."""
    with open(path, "rb") as f:
        raw = _FlameUnpickler(f, encoding="latin1").load()
    missing = [k for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table",
                           "weights", "f") if k not in raw]
    if missing:
        raise ValueError(f"{path}: not a FLAME model, missing keys {missing}")
    model = {k: _to_array(raw[k]) for k in ("v_template", "shapedirs", "posedirs", "J_regressor",
                                             "weights")}
    model["kintree_table"] = _to_array(raw["kintree_table"], np.int64)
    model["f"] = _to_array(raw["f"], np.int64)
    V = model["v_template"].shape[0]
    if model["shapedirs"].shape[:2] != (V, 3) or model["weights"].shape[0] != V:
        raise ValueError(f"{path}: inconsistent FLAME arrays (v_template {model['v_template'].shape}, "
                         f"shapedirs {model['shapedirs'].shape}, weights {model['weights'].shape})")
    return model


def build_flame(model: dict[str, np.ndarray], n_shape: int = 100, n_exp: int = 50) -> Any:
    """A torch FLAME layer. forward(shape float[B,n_shape], exp float[B,n_exp], pose float[B,6]
    (global axis-angle 3, jaw 3), eye_pose float[B,6] or None) -> vertices float[B,V,3] (metres)."""
    import torch  # heavy: loaded on use
    from torch import nn  # heavy: loaded on use

    if model["shapedirs"].shape[2] < SHAPE_COMPONENTS + n_exp or n_shape > SHAPE_COMPONENTS:
        raise ValueError(f"FLAME shapedirs {model['shapedirs'].shape} cannot give {n_shape} shape "
                         f"+ {n_exp} expression components")

    def t(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    class Flame(nn.Module):
        def __init__(self):
            super().__init__()
            sd = model["shapedirs"]
            dirs = np.concatenate([sd[:, :, :n_shape], sd[:, :, SHAPE_COMPONENTS:SHAPE_COMPONENTS + n_exp]], 2)
            self.register_buffer("v_template", t(model["v_template"]))
            self.register_buffer("shapedirs", t(dirs))
            n_pose = model["posedirs"].shape[-1]
            self.register_buffer("posedirs", t(model["posedirs"].reshape(-1, n_pose).T))
            self.register_buffer("J_regressor", t(model["J_regressor"]))
            self.register_buffer("lbs_weights", t(model["weights"]))
            self.register_buffer("faces", t(model["f"], torch.int64))
            parents = model["kintree_table"][0].copy()
            parents[0] = -1
            self.parents = [int(p) for p in parents]
            self.n_shape, self.n_exp = n_shape, n_exp

        def forward(self, shape, exp, pose, eye_pose=None):
            B = shape.shape[0]
            if eye_pose is None:
                eye_pose = shape.new_zeros(B, 6)
            neck = shape.new_zeros(B, 3)
            full_pose = torch.cat([pose[:, :3], neck, pose[:, 3:6], eye_pose], 1)
            betas = torch.cat([shape, exp], 1)
            v_shaped = self.v_template + torch.einsum("bl,vkl->bvk", betas, self.shapedirs)
            joints = torch.einsum("jv,bvk->bjk", self.J_regressor, v_shaped)
            rots = rodrigues(full_pose.reshape(-1, 3)).reshape(B, -1, 3, 3)
            eye = torch.eye(3, dtype=rots.dtype, device=rots.device)
            pose_feature = (rots[:, 1:] - eye).reshape(B, -1)
            v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(B, -1, 3)
            A = rigid_transforms(rots, joints, self.parents)  # [B,J,4,4]
            T = torch.einsum("vj,bjrc->bvrc", self.lbs_weights, A)
            homo = torch.cat([v_posed, v_posed.new_ones(B, v_posed.shape[1], 1)], 2)
            return torch.einsum("bvrc,bvc->bvr", T, homo)[..., :3]

    return Flame().eval()


def rodrigues(rot_vecs):
    """float[N,3] axis-angle -> float[N,3,3] (as smplx: angle of rot_vecs + 1e-8)."""
    import torch  # heavy: loaded on use

    angle = torch.norm(rot_vecs + 1e-8, dim=1, keepdim=True)
    axis = rot_vecs / angle
    cos, sin = torch.cos(angle)[:, :, None], torch.sin(angle)[:, :, None]
    rx, ry, rz = axis[:, 0], axis[:, 1], axis[:, 2]
    zeros = torch.zeros_like(rx)
    K = torch.stack([zeros, -rz, ry, rz, zeros, -rx, -ry, rx, zeros], 1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=rot_vecs.dtype, device=rot_vecs.device)[None]
    return eye + sin * K + (1 - cos) * (K @ K)


def rigid_transforms(rots, joints, parents: list[int]):
    """Per-joint skinning transforms float[B,J,4,4] (world transform times inverse rest pose)."""
    import torch  # heavy: loaded on use

    B, J = joints.shape[:2]
    rel = joints.clone()
    rel[:, 1:] = joints[:, 1:] - joints[:, parents[1:]]
    local = torch.zeros(B, J, 4, 4, dtype=rots.dtype, device=rots.device)
    local[:, :, :3, :3] = rots
    local[:, :, :3, 3] = rel
    local[:, :, 3, 3] = 1
    chain = [local[:, 0]]
    for i in range(1, J):
        chain.append(chain[parents[i]] @ local[:, i])
    world = torch.stack(chain, 1)
    rest = torch.einsum("bjrc,bjc->bjr", world[:, :, :3, :3], joints)
    out = world.clone()
    out[:, :, :3, 3] = world[:, :, :3, 3] - rest
    return out
