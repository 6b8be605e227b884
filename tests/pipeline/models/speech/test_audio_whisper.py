"""Bundled Whisper base: CTranslate2 -> openai-whisper conversion, cached; transcription quality;
the official-checkpoint reference backend's errors."""

from __future__ import annotations

import re

import numpy as np
import pytest
from jobs.media.talking_face import speech

from pipeline.stages.analyze.audio import AudioAnalyzer, AudioConfig
from pipeline.stages.analyze.base import DecodedTrack
from pipeline.models.registry import MissingWeightsError
from pipeline.models.speech.whisper_bundled import (
    checkpoint_path,
    converted_checkpoint,
    ct2_to_whisper,
    read_ct2_model,
)
from pipeline.stages.contract import OK, StageContext

SENTENCE = "Open the window, it is getting very warm in this little room today."


def words(text: str | None) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", (text or "").lower()).split()


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d[0] = d.copy(), i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[-1])


def test_word_error_count_is_a_real_edit_distance():
    assert word_errors(words("a b c d"), words("a x c d")) == 1
    assert word_errors(words("a b c d"), words("a c d")) == 1
    assert word_errors(words("a b c"), words("c b a x")) == 3


def test_ct2_parser_and_renaming_on_a_tiny_file():
    """A two-layer model written in CTranslate2's binary layout maps onto Whisper's names."""
    import struct

    rng = np.random.default_rng(0)
    d, heads, vocab = 8, 2, 11

    def arr(*shape):
        return rng.normal(size=shape).astype(np.float16)

    variables = {
        "encoder/num_heads": np.array(heads, np.int16),
        "decoder/num_heads": np.array(heads, np.int16),
        "encoder/conv1/weight": arr(d, 4, 3),
        "encoder/conv1/bias": arr(d),
        "encoder/conv2/weight": arr(d, d, 3),
        "encoder/conv2/bias": arr(d),
        "encoder/position_encodings/encodings": arr(6, d),
        "decoder/position_encodings/encodings": arr(5, d),
        "decoder/embeddings/weight": arr(vocab, d),
    }
    for part in ("encoder", "decoder"):
        variables[f"{part}/layer_norm/gamma"], variables[f"{part}/layer_norm/beta"] = arr(d), arr(d)
        p = f"{part}/layer_0"
        names = ["self_attention", "ffn"] + (["attention"] if part == "decoder" else [])
        for n in names:
            variables[f"{p}/{n}/layer_norm/gamma"], variables[f"{p}/{n}/layer_norm/beta"] = (
                arr(d),
                arr(d),
            )
        qkv_b = arr(3 * d)
        qkv_b[d : 2 * d] = 0
        variables[f"{p}/self_attention/linear_0/weight"] = arr(3 * d, d)
        variables[f"{p}/self_attention/linear_0/bias"] = qkv_b
        (
            variables[f"{p}/self_attention/linear_1/weight"],
            variables[f"{p}/self_attention/linear_1/bias"],
        ) = arr(d, d), arr(d)
        variables[f"{p}/ffn/linear_0/weight"], variables[f"{p}/ffn/linear_0/bias"] = (
            arr(4 * d, d),
            arr(4 * d),
        )
        variables[f"{p}/ffn/linear_1/weight"], variables[f"{p}/ffn/linear_1/bias"] = (
            arr(d, 4 * d),
            arr(d),
        )
        if part == "decoder":
            kv_b = arr(2 * d)
            kv_b[:d] = 0
            (
                variables[f"{p}/attention/linear_0/weight"],
                variables[f"{p}/attention/linear_0/bias"],
            ) = arr(d, d), arr(d)
            (
                variables[f"{p}/attention/linear_1/weight"],
                variables[f"{p}/attention/linear_1/bias"],
            ) = arr(2 * d, d), kv_b
            (
                variables[f"{p}/attention/linear_2/weight"],
                variables[f"{p}/attention/linear_2/bias"],
            ) = arr(d, d), arr(d)

    def s(text):
        raw = text.encode()
        return struct.pack("<H", len(raw) + 1) + raw + b"\0"

    dtype_ids = {np.dtype(np.float16): 4, np.dtype(np.int16): 2}
    blob = (
        struct.pack("<I", 6)
        + s("WhisperSpec")
        + struct.pack("<I", 3)
        + struct.pack("<I", len(variables))
    )
    for name, value in variables.items():
        blob += (
            s(name)
            + struct.pack("<B", value.ndim)
            + b"".join(struct.pack("<I", x) for x in value.shape)
        )
        blob += (
            struct.pack("<B", dtype_ids[value.dtype])
            + struct.pack("<I", value.nbytes)
            + value.tobytes()
        )
    blob += struct.pack("<I", 1) + s("decoder/projection/weight") + s("decoder/embeddings/weight")

    parsed = read_ct2_model(blob)
    assert np.array_equal(
        parsed["decoder/projection/weight"], variables["decoder/embeddings/weight"]
    )
    dims, sd = ct2_to_whisper(parsed)
    assert dims == {
        "n_mels": 4,
        "n_audio_ctx": 6,
        "n_audio_state": d,
        "n_audio_head": heads,
        "n_audio_layer": 1,
        "n_vocab": vocab,
        "n_text_ctx": 5,
        "n_text_state": d,
        "n_text_head": heads,
        "n_text_layer": 1,
    }
    qkv = variables["encoder/layer_0/self_attention/linear_0/weight"]
    assert np.array_equal(sd["encoder.blocks.0.attn.value.weight"], qkv[2 * d :])
    assert "encoder.blocks.0.attn.key.bias" not in sd
    import torch
    import whisper

    model = whisper.model.Whisper(whisper.model.ModelDimensions(**dims))
    model.load_state_dict(
        {k: torch.from_numpy(v.astype(np.float32)) for k, v in sd.items()}, strict=True
    )


def test_official_backend_missing_file_names_path_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    with pytest.raises(MissingWeightsError, match=r"speech/whisper-base-official/base\.pt.*OpenAI"):
        checkpoint_path("whisper-base-official")


def test_converted_base_transcribes_espeak_with_at_most_one_word_wrong(tmp_path):
    path = converted_checkpoint()
    mtime = path.stat().st_mtime_ns
    assert converted_checkpoint() == path and path.stat().st_mtime_ns == mtime  # cached
    audio = speech(SENTENCE)
    t = len(audio) // 640
    ctx = StageContext(catalog=str(tmp_path), staging=str(tmp_path / "_staging" / "r"))
    analyzer = AudioAnalyzer(AudioConfig(features=False, transcribe=True), ctx)
    analyzer.setup()
    row = analyzer.analyze(
        DecodedTrack(
            frames=np.zeros((t, 8, 8, 3), np.uint8),
            audio=audio[: t * 640],
            landmarks=np.zeros((t, 68, 2), np.float32),
            mouth_open=np.zeros(t, np.float32),
            row={"track_id": "w", "shard": 0},
        ),
        {},
    ).track
    assert row["audio_status"] == OK
    assert row["language"] == "en"
    errors = word_errors(words(SENTENCE), words(row["transcript"]))
    assert errors <= 1, f"{errors} word errors: {row['transcript']!r}"
    # segment times against where the synthesized speech is audible (from the samples)
    segments = row["transcript_segments"]
    loud = np.flatnonzero(np.abs(audio[: t * 640]) > 0.02) / 16000
    assert segments and " ".join(s["text"] for s in segments) == row["transcript"]
    assert 0.0 <= segments[0]["start_s"] <= loud[0] + 0.6, (segments, loud[0])
    assert loud[-1] - 0.6 <= segments[-1]["end_s"] <= t / 25 + 0.1, (segments, loud[-1])
    assert all(s["start_s"] < s["end_s"] for s in segments)


def test_official_backend_rejects_a_file_with_the_wrong_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOFORGE_MODELS", str(tmp_path))
    target = tmp_path / "speech" / "whisper-tiny-official" / "tiny.pt"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the official checkpoint")
    with pytest.raises(MissingWeightsError, match=r"tiny\.pt has sha256 .* expected 65147644"):
        checkpoint_path("whisper-tiny-official")
