"""Reference expression backend: DECA's coarse encoder (ResNet-50 + 2-layer MLP) and FLAME.

Files under `$EMOFORGE_MODELS/expression/deca/`: `deca_model.tar` (torch checkpoint whose
`E_flame` state dict holds `encoder.*` ResNet-50 and `layers.{0,2}` linear weights) and FLAME's
`generic_model.pkl`. The encoder maps 224x224 RGB crops in [0, 1] to 236 codes split as shape 100,
tex 50, exp 50, pose 6 (global 3, jaw 3, axis-angle), cam 3, light 27 (DECA's order). Crops are
taken around the 68 landmarks as DECA's demo does (box side 1.1 x mean extent x 1.25).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from pipeline.models.expression.flame import build_flame, load_flame_pkl
from pipeline.models.registry import ModelSpec, register, resolve
from pipeline.models.resnet import build_resnet, infer_resnet_config

log = logging.getLogger(__name__)

SPEC = register(
    ModelSpec(
        task="expression",
        backend="deca",
        kind="reference",
        files=("deca_model.tar", "generic_model.pkl"),
        license="non-commercial (DECA and FLAME research licenses)",
        source="DECA (deca.is.tue.mpg.de: deca_model.tar) and FLAME 2020 (flame.is.tue.mpg.de: "
               "generic_model.pkl), after registering and accepting their licenses",
        version="1",
        description="DECA coarse encoder (ResNet-50) + FLAME, 50 expression params",
    )
)
CODE_SIZES = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27))
INPUT_SIZE = 224


def split_codes(codes: np.ndarray) -> dict[str, np.ndarray]:
    """float[N,236] -> DECA's named parameter blocks (shape, tex, exp, pose, cam, light)."""
    total = sum(n for _, n in CODE_SIZES)
    if codes.shape[-1] != total:
        raise ValueError(f"DECA codes: expected {total} values per frame, got {codes.shape[-1]}")
    out, start = {}, 0
    for name, n in CODE_SIZES:
        out[name] = codes[..., start : start + n]
        start += n
    return out


def deca_crop(image: np.ndarray, landmarks: np.ndarray, scale: float = 1.25) -> np.ndarray:
    """uint8[H,W,3] RGB + float[68,2] px -> float32[224,224,3] in [0,1], DECA's landmark crop."""
    import cv2  # heavy: loaded on use

    left, top = landmarks.min(0)
    right, bottom = landmarks.max(0)
    old = (right - left + bottom - top) / 2 * 1.1
    cx, cy = (left + right) / 2, (top + bottom) / 2
    size = int(old * scale)
    s = INPUT_SIZE / max(size, 1)
    M = np.array([[s, 0, INPUT_SIZE / 2 - cx * s], [0, s, INPUT_SIZE / 2 - cy * s]])
    crop = cv2.warpAffine(np.ascontiguousarray(image), M, (INPUT_SIZE, INPUT_SIZE))
    return crop.astype(np.float32) / 255.0


class DecaEncoder:
    """DECA's coarse encoder and FLAME. encode: float32[N,3,224,224] in [0,1] -> dict of codes."""

    def __init__(self, checkpoint: dict, flame_model: dict | None, device: str = "cpu"):
        import torch  # heavy: loaded on use
        from torch import nn  # heavy: loaded on use

        state = checkpoint.get("E_flame") if isinstance(checkpoint, dict) else None
        if state is None:
            raise ValueError(f"deca_model.tar: expected a dict with 'E_flame', got keys "
                             f"{sorted(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint)}")
        width, layers = infer_resnet_config(state, "encoder.")
        hidden, feat = state["layers.0.weight"].shape
        out = state["layers.2.weight"].shape[0]
        encoder = nn.Module()
        encoder.encoder = build_resnet(width, layers)
        encoder.layers = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, out))
        if encoder.encoder.num_features != feat:
            raise ValueError(f"deca_model.tar: ResNet gives {encoder.encoder.num_features} features, "
                             f"the MLP expects {feat}")
        encoder.load_state_dict(state, strict=True)
        self.net = encoder.eval().to(device)
        self.device = device
        self.torch = torch
        self.n_exp = dict(CODE_SIZES)["exp"]
        self.flame = None if flame_model is None else build_flame(flame_model).to(device)

    @classmethod
    def from_model_root(cls, device: str = "cpu", with_flame: bool = True) -> DecaEncoder:
        import torch  # heavy: loaded on use

        ckpt = torch.load(resolve(SPEC, "deca_model.tar"), map_location="cpu", weights_only=False)
        flame = load_flame_pkl(resolve(SPEC, "generic_model.pkl")) if with_flame else None
        return cls(ckpt, flame, device)

    def encode(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """float32[N,3,224,224] in [0,1] -> {shape, tex, exp, pose, cam, light} float32 arrays."""
        with self.torch.inference_mode():
            x = self.torch.as_tensor(images, dtype=self.torch.float32, device=self.device)
            feats = self.net.encoder(x)
            codes = self.net.layers(feats).cpu().numpy()
        return split_codes(codes)

    def vertices(self, codes: dict[str, np.ndarray]) -> np.ndarray:
        """FLAME vertices float32[N,V,3] of encoded shape, exp and pose."""
        if self.flame is None:
            raise RuntimeError("DecaEncoder was built without FLAME")
        t = self.torch
        with t.inference_mode():
            args = [t.as_tensor(codes[k], dtype=t.float32, device=self.device)
                    for k in ("shape", "exp", "pose")]
            return self.flame(*args).cpu().numpy()

    def encode_track(self, frames: np.ndarray, landmarks: np.ndarray,
                     batch_size: int = 32) -> dict[str, np.ndarray]:
        """uint8[T,S,S,3] crops + float[T,68,2] px -> per-frame codes (NaN rows where the
        landmarks are unknown)."""
        T = len(frames)
        valid = np.isfinite(landmarks).all(axis=(1, 2))
        result: dict[str, Any] = {name: np.full((T, n), np.nan, np.float32) for name, n in CODE_SIZES}
        idx = np.flatnonzero(valid)
        for i in range(0, len(idx), batch_size):
            chunk = idx[i : i + batch_size]
            batch = np.stack([deca_crop(frames[j], landmarks[j]) for j in chunk]).transpose(0, 3, 1, 2)
            for name, value in self.encode(batch).items():
                result[name][chunk] = value
        return result
