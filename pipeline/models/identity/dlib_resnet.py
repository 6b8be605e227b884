"""dlib's face descriptor network (dlib_face_recognition_resnet_model_v1, 128-d) rebuilt in torch
from dlib's own serialized weight file, and run on onnxruntime (default) or torch.

dlib-bin here is built without BLAS, so `face_recognition_model_v1.compute_face_descriptor`
spends ~110 ms per face; the same ResNet takes ~8 ms on onnxruntime and ~14 ms in torch on one
CPU thread, and matches dlib's output to within ~1e-6.

The network is `anet_type` of dlib's examples/dnn_face_recognition_ex.cpp:

    input_rgb_image_sized<150>              (pixel - avg_rgb) / 256, planes R, G, B
    con 32 7x7 /2, affine, relu, max_pool 3x3 /2            150 -> 72 -> 35
    3 x ares<32>                                             35
    ares_down<64>,  3 x ares<64>                             17
    ares_down<128>, 2 x ares<128>                            8
    ares_down<256>, 2 x ares<256>                            4  (see below)
    ares_down<256>                                           2
    avg_pool_everything, fc_no_bias 128, loss_metric        (the output is the raw fc output)

    block(N, s) = affine(con N 3x3 /1(relu(affine(con N 3x3 /s(x)))))
    ares        = relu(block(x) + x)
    ares_down   = relu(block(x, s=2) + avg_pool 2x2 /2(x))

dlib pads a convolution or pooling by size//2 only when its stride is 1 (0 otherwise), and its
add_prev adds tensors of different shapes by zero-extending both to the larger shape (channels,
rows, columns: the smaller one sits at the top-left). That matters twice: the 64/128/256-channel
downsampling shortcuts carry fewer channels than the block, and the 8x8 -> ares_down<256> block
gives 3x3 while its 2x2 average pool gives 4x4 (and 4x4 gives 1x1 against 2x2 one level later).
`affine` is dlib's frozen batch norm: one gamma and beta per channel (folded into the preceding
convolution here).

File format (dlib/serialize.h, dlib/dnn/core.h, layers.h, input.h, loss.h, cuda/tensor.h):
  * integers: a control byte (bit 7 = negative, low 4 bits = byte count) then that many
    little-endian magnitude bytes;
  * floats and doubles: two such integers, mantissa (int64) then exponent (int16), value
    mantissa * 2**exponent (exponents 32000/32001/32002 mean +inf/-inf/nan);
  * bools: the ASCII byte '1' or '0'; strings: an integer length then the bytes;
  * tensors: version 2, num_samples, k, nr, nc, then raw little-endian float32 values (so the
    bulk of the file decodes with one np.frombuffer per tensor); alias tensors: version 1 and the
    four sizes, no data;
  * add_loss_layer: version 1, loss details, subnet. add_layer: version 2, subnet, details, three
    bools, x_grad, cached_output, params_grad tensors; the add_layer over the input layer instead
    has version 3, the input layer, details, three bools, x_grad, cached_output, grad_final and
    sample_expansion_factor. tag and skip layers: version 1, subnet.
  Because every layer writes its subnet before its own details, the stream is: all the wrappers'
  version numbers from the top down, the input layer, then each layer's details bottom-up.
  Every layer's details start with a version string ("con_4", "affine_", "relu_", "max_pool_2",
  "avg_pool_2", "add_prev_", "fc_2", "loss_metric_2", "input_rgb_image_sized").

Public API: parse_dlib_resnet(path) -> DlibResNetWeights (numpy only; parse_dlib_resnet_bytes for
bytes), build_dlib_resnet(weights) -> torch module, load_dlib_resnet(path, engine, threads) ->
DescriptorNet (the network on onnxruntime or torch), and embed_chips(net, chips) -> float32[N,128].

Engines: by default the torch module is exported to ONNX in memory (about 0.7 s, once per load)
and runs on onnxruntime: 8.0 ms a chip on one thread here against 14.2 ms in torch (whose CPU
convolutions take its slow im2col path for these small batch-1 feature maps); outputs agree
within 1e-6.
"""

from __future__ import annotations

import fcntl
import io
import math
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.onnx_session import ort_session
from pipeline.models.registry import cache_root

CHIP_SIZE = 150
DESCRIPTOR_DIM = 128

# (channels, number of ares blocks, first block downsamples) from the input side up: alevel4..0.
_LEVELS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


# ------------------------------------------------------------------------------------------
# Expected layer sequence


@dataclass(frozen=True)
class _Layer:
    """One layer of anet_type below the loss: `wrapper` is "add" (add_layer), "tag" or "skip";
    `kind` names the details ("con", "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc")
    and `args` its template arguments."""

    wrapper: str
    kind: str
    args: tuple = ()


def _block(n: int, stride: int) -> list[_Layer]:
    # bottom-up: con /stride, affine, relu, con /1, affine
    return [_Layer("add", "con", (n, 3, 3, stride, stride)), _Layer("add", "affine"),
            _Layer("add", "relu"), _Layer("add", "con", (n, 3, 3, 1, 1)), _Layer("add", "affine")]


def expected_layers() -> list[_Layer]:
    """anet_type from the input up to the fc layer (the loss layer excluded)."""
    layers = [_Layer("add", "con", (32, 7, 7, 2, 2)), _Layer("add", "affine"),
              _Layer("add", "relu"), _Layer("add", "max_pool", (3, 3, 2, 2))]
    for n, count, down in _LEVELS:
        for i in range(count):
            layers.append(_Layer("tag", "tag", (1,)))
            if down and i == 0:
                layers += _block(n, 2)
                layers += [_Layer("tag", "tag", (2,)), _Layer("skip", "skip", (1,)),
                           _Layer("add", "avg_pool", (2, 2, 2, 2)),
                           _Layer("add", "add_prev", (2,))]
            else:
                layers += _block(n, 1) + [_Layer("add", "add_prev", (1,))]
            layers.append(_Layer("add", "relu"))
    layers += [_Layer("add", "avg_pool", (0, 0, 1, 1)), _Layer("add", "fc", (DESCRIPTOR_DIM,))]
    return layers


# ------------------------------------------------------------------------------------------
# Reader of dlib's serialization primitives


class _Reader:
    """Sequential reader over the bytes of a dlib-serialized object."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.pos = 0
        self.name = name

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"{self.name}: not a (complete) dlib_face_recognition_resnet_model_v1"
                          f" file: {what} (at byte {self.pos} of {len(self.data)})")

    def _take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self._fail(f"file ends while reading {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_int(self, what: str = "an integer") -> int:
        control = self._take(1, what)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise self._fail(f"bad integer control byte 0x{control:02x} while reading {what}")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if control & 0x80 else value

    def read_float(self, what: str = "a float") -> float:
        mantissa = self.read_int(what)
        exponent = self.read_int(what)
        if exponent >= 32000:
            return {32000: math.inf, 32001: -math.inf}.get(exponent, math.nan)
        return math.ldexp(mantissa, exponent)

    def read_bool(self, what: str = "a bool") -> bool:
        ch = self._take(1, what)
        if ch not in (b"0", b"1"):
            raise self._fail(f"expected '0' or '1' for {what}, found {ch!r}")
        return ch == b"1"

    def read_string(self, what: str = "a string") -> str:
        n = self.read_int(what)
        if n < 0 or n > 256:
            raise self._fail(f"implausible string length {n} for {what}")
        return self._take(n, what).decode("latin-1")

    def version(self, expected: str, where: str) -> None:
        found = self.read_string(f"the version string of {where}")
        if found != expected:
            raise self._fail(f"expected {where} version {expected!r}, found {found!r}")

    def int_version(self, allowed: tuple[int, ...], where: str) -> int:
        found = self.read_int(f"the version number of {where}")
        if found not in allowed:
            raise self._fail(f"expected {where} version in {allowed}, found {found}")
        return found

    def expect(self, what: str, expected: Any, found: Any) -> None:
        if found != expected:
            raise self._fail(f"expected {what} {expected!r}, found {found!r}")

    def tensor(self, what: str) -> np.ndarray:
        self.int_version((2,), f"tensor {what}")
        shape = tuple(self.read_int(f"the shape of tensor {what}") for _ in range(4))
        if min(shape) < 0:
            raise self._fail(f"negative shape {shape} for tensor {what}")
        count = math.prod(shape)
        raw = self._take(4 * count, f"{count} float32 values of tensor {what}")
        return np.frombuffer(raw, dtype="<f4").reshape(shape)

    def alias_tensor(self, what: str) -> tuple[int, int, int, int]:
        self.int_version((1,), f"alias tensor {what}")
        return tuple(self.read_int(f"the shape of alias tensor {what}") for _ in range(4))


# ------------------------------------------------------------------------------------------
# Parsing


@dataclass
class DlibResNetWeights:
    """Parsed contents: input mean, convolutions (bottom-up, affine not folded) and fc."""

    mean_rgb: tuple[float, float, float]
    convs: list[dict[str, Any]] = field(default_factory=list)  # weight, bias, stride, padding
    affines: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # gamma, beta
    fc_weight: np.ndarray | None = None  # float32[num_inputs, 128], dlib's layout (x @ W)
    loss_margin: float = 0.0
    loss_threshold: float = 0.0


def _default_padding(nr: int, stride: int) -> int:
    return nr // 2 if stride == 1 else 0


def _read_details(r: _Reader, layer: _Layer, index: int, w: DlibResNetWeights) -> None:
    where = f"layer {index} ({layer.kind})"
    if layer.kind == "con":
        n, nr, nc, sy, sx = layer.args
        r.version("con_4", where)
        params = r.tensor(f"{where} params").reshape(-1)
        found = (r.read_int(), r.read_int(), r.read_int(), r.read_int(), r.read_int())
        r.expect(f"{where} (num_filters, nr, nc, stride_y, stride_x)", layer.args, found)
        pad = (r.read_int(), r.read_int())
        r.expect(f"{where} padding", (_default_padding(nr, sy), _default_padding(nc, sx)), pad)
        filters = r.alias_tensor(f"{where} filters")
        biases = r.alias_tensor(f"{where} biases")
        for name in ("lr mult", "wd mult", "bias lr mult", "bias wd mult"):
            r.read_float(f"{where} {name}")
        r.expect(f"{where} filter count/size", (n, nr, nc), (filters[0], *filters[2:]))
        k = filters[1]
        r.expect(f"{where} params size", n * k * nr * nc + n, params.size)
        r.expect(f"{where} bias shape", (1, n, 1, 1), biases)
        w.convs.append({"weight": params[:n * k * nr * nc].reshape(n, k, nr, nc),
                        "bias": params[n * k * nr * nc:], "stride": sy, "padding": pad[0]})
    elif layer.kind == "affine":
        r.version("affine_", where)
        params = r.tensor(f"{where} params").reshape(-1)
        gamma = r.alias_tensor(f"{where} gamma")
        beta = r.alias_tensor(f"{where} beta")
        mode = r.read_int(f"{where} mode")
        r.expect(f"{where} mode (0 = per channel)", 0, mode)
        r.expect(f"{where} gamma/beta shapes", gamma, beta)
        c = math.prod(gamma)
        r.expect(f"{where} params size", 2 * c, params.size)
        w.affines.append((params[:c], params[c:]))
    elif layer.kind in ("relu", "add_prev"):
        r.version(f"{layer.kind}_", where)
    elif layer.kind in ("max_pool", "avg_pool"):
        r.version(f"{layer.kind}_2", where)
        found = (r.read_int(), r.read_int(), r.read_int(), r.read_int())
        r.expect(f"{where} (nr, nc, stride_y, stride_x)", layer.args, found)
        nr, nc, sy, sx = layer.args
        pad = (r.read_int(), r.read_int())
        r.expect(f"{where} padding", (_default_padding(nr, sy), _default_padding(nc, sx)), pad)
    elif layer.kind == "fc":
        r.version("fc_2", where)
        outputs, inputs = r.read_int(), r.read_int()
        r.expect(f"{where} num_outputs", layer.args[0], outputs)
        params = r.tensor(f"{where} params").reshape(-1)
        weights = r.alias_tensor(f"{where} weights")
        r.alias_tensor(f"{where} biases")
        r.expect(f"{where} bias mode (1 = no bias)", 1, r.read_int())
        for name in ("lr mult", "wd mult", "bias lr mult", "bias wd mult"):
            r.read_float(f"{where} {name}")
        r.expect(f"{where} weights shape", (inputs, outputs, 1, 1), weights)
        r.expect(f"{where} params size", inputs * outputs, params.size)
        w.fc_weight = params.reshape(inputs, outputs)
    else:  # pragma: no cover - expected_layers() only produces the kinds above
        raise AssertionError(layer.kind)


def _read_layer_state(r: _Reader, where: str, tensors: int) -> None:
    """The bools and (normally empty) tensors an add_layer writes after its details."""
    for name in ("this_layer_setup_called", "gradient_input_is_stale",
                 "get_output_and_gradient_input_disabled"):
        r.read_bool(f"{where} {name}")
    for i in range(tensors):
        r.tensor(f"{where} state {i}")


def parse_dlib_resnet_bytes(data: bytes, name: str = "<bytes>") -> DlibResNetWeights:
    """Parse the serialized dlib_face_recognition_resnet_model_v1 (see the module docstring)."""
    r = _Reader(data, name)
    layers = expected_layers()
    r.int_version((1,), "add_loss_layer")
    r.version("loss_metric_2", "the loss layer")
    margin, threshold = r.read_float("loss margin"), r.read_float("loss distance threshold")
    # Wrapper version numbers, top-down (the bottom con is the add_layer over the input).
    add_versions = {}
    for i in range(len(layers) - 1, 0, -1):
        layer = layers[i]
        if layer.wrapper == "add":
            add_versions[i] = r.int_version((1, 2), f"add_layer {i} ({layer.kind})")
        else:
            r.int_version((1,), f"{layer.wrapper} layer {i}")
    input_version = r.int_version((2, 3), "the add_layer over the input layer")
    r.version("input_rgb_image_sized", "the input layer")
    mean_rgb = (r.read_float("avg_red"), r.read_float("avg_green"), r.read_float("avg_blue"))
    r.expect("input size", (CHIP_SIZE, CHIP_SIZE), (r.read_int("input nr"), r.read_int("input nc")))
    weights = DlibResNetWeights(mean_rgb=mean_rgb, loss_margin=margin, loss_threshold=threshold)
    # Details and state, bottom-up.
    _read_details(r, layers[0], 0, weights)
    _read_layer_state(r, "layer 0", 3)
    if input_version == 3:
        r.read_int("sample_expansion_factor")
    for i in range(1, len(layers)):
        if layers[i].wrapper == "add":
            _read_details(r, layers[i], i, weights)
            _read_layer_state(r, f"layer {i}", 3 if add_versions[i] == 2 else 2)
    if r.pos != len(data):
        raise r._fail(f"{len(data) - r.pos} unexpected bytes after the network")
    return weights


def parse_dlib_resnet(path: str | Path) -> DlibResNetWeights:
    """Read and parse the weight file at `path` (ValueError if it is not this network)."""
    path = Path(path)
    return parse_dlib_resnet_bytes(path.read_bytes(), str(path))


# ------------------------------------------------------------------------------------------
# Torch module


def _fold(conv: dict[str, Any], affine: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
    """affine(con(x)) as a single convolution: weight * gamma, bias * gamma + beta."""
    import torch  # heavy: loaded on use

    gamma, beta = (a.astype(np.float64) for a in affine)
    weight = conv["weight"].astype(np.float64) * gamma[:, None, None, None]
    bias = conv["bias"].astype(np.float64) * gamma + beta
    return (torch.from_numpy(weight.astype(np.float32)), torch.from_numpy(bias.astype(np.float32)))


def build_dlib_resnet(weights: DlibResNetWeights) -> Any:
    """The torch module (eval mode, float32, CPU, channels_last) for parsed
    weights. forward: float32[N,3,150,150] RGB pixel values in 0..255 -> float32[N,128]."""
    import torch  # heavy: loaded on use
    import torch.nn.functional as F  # heavy: loaded on use
    from torch import nn  # heavy: loaded on use

    def conv(i: int) -> nn.Conv2d:
        c = weights.convs[i]
        out_ch, in_ch, kh, _ = c["weight"].shape
        m = nn.Conv2d(in_ch, out_ch, kh, stride=c["stride"], padding=c["padding"])
        m.weight.data, m.bias.data = _fold(c, weights.affines[i])
        return m

    def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """dlib's add_prev: both zero-extended (at the end) to the larger C, H, W."""
        if a.shape == b.shape:
            return a + b
        c, h, w = (max(x, y) for x, y in zip(a.shape[1:], b.shape[1:], strict=True))
        a = F.pad(a, (0, w - a.shape[3], 0, h - a.shape[2], 0, c - a.shape[1]))
        b = F.pad(b, (0, w - b.shape[3], 0, h - b.shape[2], 0, c - b.shape[1]))
        return a + b

    class ResBlock(nn.Module):
        """relu(block(x) + shortcut(x)); the shortcut is a 2x2 average pool when downsampling."""

        def __init__(self, conv1: nn.Conv2d, conv2: nn.Conv2d, downsample: bool):
            super().__init__()
            self.conv1, self.conv2, self.downsample = conv1, conv2, downsample

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv2(F.relu(self.conv1(x)))
            shortcut = F.avg_pool2d(x, 2, 2) if self.downsample else x
            return F.relu(add_zero_padded(y, shortcut))

    class DlibResNet(nn.Module):
        """dlib_face_recognition_resnet_model_v1 with each affine folded into its convolution."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(weights.mean_rgb, dtype=torch.float32)
                                 .view(1, 3, 1, 1))
            self.stem = conv(0)
            blocks, i = [], 1
            for _, count, down in _LEVELS:
                for j in range(count):
                    blocks.append(ResBlock(conv(i), conv(i + 1), down and j == 0))
                    i += 2
            self.blocks = nn.ModuleList(blocks)
            self.fc = nn.Linear(weights.fc_weight.shape[0], DESCRIPTOR_DIM, bias=False)
            self.fc.weight.data = torch.from_numpy(np.ascontiguousarray(weights.fc_weight.T))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = (x - self.mean) / 256.0
            x = F.max_pool2d(F.relu(self.stem(x)), 3, 2)
            for block in self.blocks:
                x = block(x)
            return self.fc(x.mean(dim=(2, 3)))

    model = DlibResNet().float().eval().requires_grad_(False)
    return model.to(memory_format=torch.channels_last)


ENGINES = ("onnxruntime", "torch")


def export_onnx(module: Any) -> bytes:
    """The torch module (see build_dlib_resnet) as an ONNX model with a dynamic batch axis:
    input "chips" float32[N,3,150,150], output "descriptors" float32[N,128]."""
    import torch  # heavy: loaded on use

    buffer = io.BytesIO()
    example = torch.zeros(1, 3, CHIP_SIZE, CHIP_SIZE)
    with warnings.catch_warnings():  # the exporter's notes on tracing and constant folding
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=17,
                          input_names=["chips"], output_names=["descriptors"],
                          dynamic_axes={"chips": {0: "n"}, "descriptors": {0: "n"}})
    return buffer.getvalue()


class DescriptorNet:
    """The descriptor network on one engine: call with float32[N,3,150,150] RGB pixel values
    (0..255) to get float32[N,128] raw descriptors."""

    def __init__(self, module: Any, engine: str = "onnxruntime", threads: int = 1):
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
        self.engine, self.module, self.session = engine, module, None
        if engine == "onnxruntime":
            self.session = ort_session(export_onnx(module), threads)
            self.module = None  # the session holds its own copy of the weights

    @classmethod
    def from_onnx(cls, data: bytes, threads: int = 1) -> DescriptorNet:
        """The network from its ONNX export (see export_onnx), on onnxruntime."""
        net = cls.__new__(cls)
        net.engine, net.module, net.session = "onnxruntime", None, ort_session(data, threads)
        return net

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.session is not None:
            return self.session.run(None, {"chips": x})[0]
        import torch  # heavy: loaded on use

        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).numpy()


def load_dlib_resnet(path: str | Path, engine: str = "onnxruntime", threads: int = 1) -> DescriptorNet:
    """Parse dlib's weight file once and return the network on `engine` (see DescriptorNet).
    On onnxruntime the exported model is cached (`cached_onnx`): a worker then starts in about
    0.2 s instead of importing torch, building and exporting the network (about 4-7 s here)."""
    if engine == "onnxruntime":
        return DescriptorNet.from_onnx(cached_onnx(path), threads)
    return DescriptorNet(build_dlib_resnet(parse_dlib_resnet(path)), engine, threads)


ONNX_EXPORT_VERSION = "1"


def cached_onnx(path: str | Path) -> bytes:
    """The ONNX export of the network in dlib's weight file `path`, kept in
    $EMOFORGE_CACHE/dlib/ (keyed by the file's size and mtime and the export version; written
    atomically under a lock). An unwritable cache still returns the bytes."""
    st = Path(path).stat()
    folder = cache_root() / "dlib"
    target = folder / f"resnet-{st.st_size}-{st.st_mtime_ns}-v{ONNX_EXPORT_VERSION}.onnx"
    if target.is_file():
        return target.read_bytes()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".export.lock", "w")
    except OSError:
        return export_onnx(build_dlib_resnet(parse_dlib_resnet(path)))
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target.read_bytes()
        data = export_onnx(build_dlib_resnet(parse_dlib_resnet(path)))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    return data


def embed_chips(net: DescriptorNet, chips: Any, batch_size: int = 64) -> np.ndarray:
    """Raw (unnormalized, dlib's scale) descriptors of aligned face chips, as made by
    dlib.get_face_chip(img, shape, size=150, padding=0.25).
    chips: uint8[150,150,3] or uint8[N,150,150,3] RGB (or a list of such) -> float32[N,128]."""
    arr = np.asarray(chips)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
        raise ValueError(f"expected RGB chips of shape [N,{CHIP_SIZE},{CHIP_SIZE},3], "
                         f"got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 chips, got {arr.dtype}")
    out = np.empty((len(arr), DESCRIPTOR_DIM), np.float32)
    for start in range(0, len(arr), batch_size):
        batch = arr[start:start + batch_size].transpose(0, 3, 1, 2).astype(np.float32)
        out[start:start + len(batch)] = net(batch)
    return out
