"""Reference lip-sync backend: the SyncNet v2 network (syncnet_python) and its weight loader.

The user places `syncnet_v2.model` (a pickled state dict of syncnet_python's `S` module) under
`$EMOFORGE_MODELS/lip_sync/syncnet/`. Inputs, as syncnet_python feeds them:
- video: float32[N,3,5,224,224], five consecutive 25 fps face crops, BGR channel order, 0..255;
- audio: float32[N,1,13,20], 20 MFCC frames (100 Hz, 0.2 s) starting at 4 x the video frame.
Both towers give 1024-d embeddings; in-sync pairs are close in Euclidean distance.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

SYNCNET = register(
    ModelSpec(
        task="lip_sync",
        backend="syncnet",
        kind="reference",
        files=("syncnet_v2.model",),
        license="research-only (VGG SyncNet v2 weights; syncnet_python code is MIT)",
        source="syncnet_python (joonson) download_model.sh: syncnet_v2.model",
        version="v2",
        description="SyncNet v2: 5-frame face crops vs 0.2 s MFCC, offsets of +-15 frames",
    )
)

CROP = 224  # face-crop side SyncNet expects
WINDOW = 5  # video frames per embedding
MFCC_PER_FRAME = 4  # 100 Hz MFCC frames per 25 fps video frame
MFCC_WINDOW = 20  # MFCC frames per embedding (0.2 s)

# Layer plans: ("conv", in, out, kernel, stride, padding) / ("pool", kernel, stride, padding).
_AUDIO_PLAN = [
    ("conv", 1, 64, (3, 3), (1, 1), (1, 1)),
    ("pool", (1, 1), (1, 1), 0),
    ("conv", 64, 192, (3, 3), (1, 1), (1, 1)),
    ("pool", (3, 3), (1, 2), 0),
    ("conv", 192, 384, (3, 3), (1, 1), (1, 1)),
    ("conv", 384, 256, (3, 3), (1, 1), (1, 1)),
    ("conv", 256, 256, (3, 3), (1, 1), (1, 1)),
    ("pool", (3, 3), (2, 2), 0),
    ("conv", 256, 512, (5, 4), (1, 1), (0, 0)),
]
_LIP_PLAN = [
    ("conv", 3, 96, (5, 7, 7), (1, 2, 2), 0),
    ("pool", (1, 3, 3), (1, 2, 2), 0),
    ("conv", 96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("conv", 256, 256, (1, 3, 3), (1, 1, 1), (0, 1, 1)),
    ("pool", (1, 3, 3), (1, 2, 2), 0),
    ("conv", 256, 512, (1, 6, 6), (1, 1, 1), 0),
]


def _tower(plan: list[tuple], dims: int):
    """A conv tower: every conv is followed by batch norm and ReLU; pools as planned."""
    from torch import nn  # heavy: loaded on use

    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
    pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
    layers: list = []
    for step in plan:
        if step[0] == "conv":
            _, cin, cout, kernel, stride, padding = step
            layers += [conv(cin, cout, kernel, stride, padding), norm(cout), nn.ReLU(inplace=True)]
        else:
            _, kernel, stride, padding = step
            layers.append(pool(kernel, stride, padding))
    return nn.Sequential(*layers)


def _head(embed: int):
    from torch import nn  # heavy: loaded on use

    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))


def build_syncnet(embed: int = 1024):
    """The SyncNet `S` network with syncnet_python's parameter names (netcnnaud, netfcaud,
    netcnnlip, netfclip), so its state dicts load unchanged."""
    from torch import nn  # heavy: loaded on use

    class SyncNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.netcnnaud = _tower(_AUDIO_PLAN, 2)
            self.netfcaud = _head(embed)
            self.netfclip = _head(embed)
            self.netcnnlip = _tower(_LIP_PLAN, 3)

        def forward_aud(self, x):
            """float32[N,1,13,20] MFCC windows -> float32[N,embed]."""
            return self.netfcaud(self.netcnnaud(x).flatten(1))

        def forward_lip(self, x):
            """float32[N,3,5,224,224] BGR 0..255 crops -> float32[N,embed]."""
            return self.netfclip(self.netcnnlip(x).flatten(1))

    return SyncNet()


def load_syncnet(path: Path | str | None = None, device: str = "cpu"):
    """SyncNet in eval mode with weights from `path` (default: the model root's
    syncnet_v2.model). Every parameter and buffer of the file must match the architecture."""
    import torch  # heavy: loaded on use

    path = Path(path) if path is not None else resolve(SYNCNET)
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(
            f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}"
        )
    if all(k.startswith("__S__.") for k in state):
        state = {k[len("__S__.") :]: v for k, v in state.items()}
    model = build_syncnet()
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unknown = sorted(set(state) - set(own))
    if missing or unknown:
        raise ValueError(
            f"{path}: not a SyncNet v2 state dict: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unknown[:5]} ({len(unknown)})"
        )
    for name, value in state.items():
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(
                f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(own[name].shape)}"
            )
    model.load_state_dict(state, strict=True)
    log.info("loaded SyncNet weights from %s", path)
    return model.to(device).eval()
