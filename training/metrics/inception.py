"""InceptionV3 pool3 features (2048-d) for FID, written in torch, with its weight loader.

Two weight files share one layout (torchvision's module names, BatchNorm eps 0.001):
- pytorch-fid's port of the TF FID graph, `pt_inception-2015-12-05-6726825d.pth` (fc 1008 classes,
  no AuxLogits): the pooling branches follow the TF graph (average pools exclude the padding, the
  last block's pool branch is a max pool). This is the FID reference network.
- torchvision's `inception_v3_google-0cc3c7bd.pth` (fc 1000, AuxLogits ignored): average pools
  include the padding. Numbers from it are not comparable with published FIDs.
The format is told from fc.weight's row count. Input: uint8 RGB, resized bilinearly to 299x299 and
scaled to [-1, 1] (what both networks expect: torchvision's transform_input maps ImageNet
normalization to exactly this).
Checked once against torchvision 0.28's Inception3 (tf=False) and pytorch-fid 0.3.0's FID blocks
(tf=True) with the same random weights: identical pool3 features (6e-6 apart end to end, from
resizing before rather than after the [-1, 1] scaling); neither package is a dependency.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.registry import MissingWeightsError, model_root
from training.weights import FID_SPEC

log = logging.getLogger(__name__)

ALTERNATE_FILES = ("pt_inception-2015-12-05-6726825d.pth", "inception_v3_google.pth",
                   "inception_v3_google-0cc3c7bd.pth")


class BasicConv2d(nn.Module):
    def __init__(self, cin: int, cout: int, **kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg(x: torch.Tensor, tf: bool) -> torch.Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=not tf)


class InceptionA(nn.Module):
    def __init__(self, cin: int, pool: int, tf: bool) -> None:
        super().__init__()
        self.tf = tf
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg(x, self.tf))], 1)


class InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int, tf: bool) -> None:
        super().__init__()
        self.tf = tf
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg(x, self.tf))], 1)


class InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = x
        for k in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{k}")(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool  # "avg" (torchvision), "avg_tf" (TF Mixed_7b), "max" (TF Mixed_7c)
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        if self.pool == "max":
            p = F.max_pool2d(x, 3, 1, 1)
        else:
            p = _avg(x, self.pool == "avg_tf")
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(p)], 1)


class InceptionV3Features(nn.Module):
    """InceptionV3 up to the 2048-d global average pool ("pool3").

    tf: the FID (TF graph) pooling variant; num_classes: rows of the (unused) fc layer kept so
    the state dict loads strictly. forward: float[N,3,H,W] in [-1, 1] (any H, W; resized to 299)
    -> float[N,2048]."""

    def __init__(self, tf: bool = True, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, 32, tf)
        self.Mixed_5c = InceptionA(256, 64, tf)
        self.Mixed_5d = InceptionA(288, 64, tf)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, 128, tf)
        self.Mixed_6c = InceptionC(768, 160, tf)
        self.Mixed_6d = InceptionC(768, 160, tf)
        self.Mixed_6e = InceptionC(768, 192, tf)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, "avg_tf" if tf else "avg")
        self.Mixed_7c = InceptionE(2048, "max" if tf else "avg")
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (299, 299):
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def inception_path(path: str | Path | None = None) -> Path:
    """The FID Inception weights: `path`, else the first of FID_SPEC's file and ALTERNATE_FILES
    under `<model root>/metrics/inception/`; MissingWeightsError names the path and the source."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise MissingWeightsError(f"FID Inception weights not found at {p}. Source: {FID_SPEC.source}")
        return p
    folder = model_root() / FID_SPEC.task / FID_SPEC.backend
    for name in (*FID_SPEC.files, *ALTERNATE_FILES):
        if (folder / name).is_file():
            return folder / name
    raise MissingWeightsError(
        f"FID Inception weights missing: expected {folder / FID_SPEC.files[0]} (or "
        f"{', '.join(ALTERNATE_FILES)} there). Source: {FID_SPEC.source}")


def load_inception(path: str | Path | None = None, device: str = "cpu") -> InceptionV3Features:
    """InceptionV3Features with weights from a pytorch-fid (fc 1008) or torchvision (fc 1000)
    state dict, in eval mode. Unknown or missing keys raise ValueError naming them and the file."""
    p = inception_path(path)
    state = torch.load(p, map_location="cpu", weights_only=True)
    if "fc.weight" not in state:
        raise ValueError(f"{p}: not an InceptionV3 state dict (no fc.weight); expected "
                         f"pytorch-fid's or torchvision's layout. Source: {FID_SPEC.source}")
    classes = int(state["fc.weight"].shape[0])
    tf = classes == 1008
    state = {k: v for k, v in state.items()
             if not k.startswith("AuxLogits.") and not k.endswith("num_batches_tracked")}
    model = InceptionV3Features(tf=tf, num_classes=classes)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    missing, unknown = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unknown:
        raise ValueError(f"{p}: InceptionV3 state dict does not match: missing {missing[:5]}, "
                         f"unexpected {unknown[:5]} ({len(missing)}/{len(unknown)} in all)")
    model.load_state_dict(state, strict=False)
    log.info("FID Inception from %s (%s variant)", p, "TF/pytorch-fid" if tf else "torchvision")
    return model.eval().to(device)


@torch.no_grad()
def inception_features(model: InceptionV3Features, images: np.ndarray, batch_size: int = 16,
                       device: str = "cpu") -> np.ndarray:
    """images uint8[N,H,W,3] RGB -> float64[N,2048] pool3 features."""
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).to(device)
        x = x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
        out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2048))
