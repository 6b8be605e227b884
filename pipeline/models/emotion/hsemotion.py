"""Reference emotion backend: HSEmotion (EfficientNet, 8 AffectNet classes) from an ONNX file.

The user places `enet_b0_8_best_afew.onnx` under `$EMOFORGE_MODELS/emotion/hsemotion/`. Input:
RGB faces resized to the model's side (224 for B0), scaled to [0, 1] and normalized with ImageNet
mean/std, NCHW float32. Output: 8 logits (softmaxed here), or 10 values for the multi-task
models, whose last two are valence and arousal.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.models.registry import ModelSpec, register, resolve

log = logging.getLogger(__name__)

MODEL_FILE = "enet_b0_8_best_afew.onnx"
SPEC = register(
    ModelSpec(
        task="emotion",
        backend="hsemotion",
        kind="reference",
        files=(MODEL_FILE,),
        license="Apache-2.0 (HSEmotion); trained on AffectNet (research use)",
        source="HSEmotion (github.com/av-savchenko/face-emotion-recognition, models/affectnet_emotions/onnx)",
        version="1",
        description="EfficientNet-B0, 8 AffectNet classes",
    )
)
HSEMOTION_CLASSES = ("angry", "contempt", "disgust", "fear", "happy", "neutral", "sad", "surprise")
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


class HSEmotion:
    """predict: uint8[N,H,W,3] RGB faces -> (float32[N,8] probabilities, float32[N,2] valence and
    arousal or None when the model has no such outputs)."""

    classes = HSEMOTION_CLASSES
    spec = SPEC

    def __init__(self, path: str | None = None, batch_size: int = 16, num_threads: int = 1):
        import onnxruntime as ort  # heavy: loaded on use

        self.path = str(path or resolve(SPEC, MODEL_FILE))
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        side = inp.shape[2] if isinstance(inp.shape[2], int) else 224
        self.size = int(side)
        n_out = self.session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out not in (8, 10):
            raise ValueError(f"{self.path}: expected 8 class logits (or 8 + valence, arousal), "
                             f"got {n_out} outputs")
        self.batch_size = batch_size

    def preprocess(self, faces: np.ndarray) -> np.ndarray:
        """uint8[N,H,W,3] RGB -> float32[N,3,S,S] normalized."""
        import cv2  # heavy: loaded on use

        out = np.empty((len(faces), 3, self.size, self.size), np.float32)
        for i, face in enumerate(faces):
            x = cv2.resize(np.ascontiguousarray(face), (self.size, self.size)).astype(np.float32)
            out[i] = ((x / 255.0 - MEAN) / STD).transpose(2, 0, 1)
        return out

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        scores = [self.session.run(None, {self.input_name: self.preprocess(faces[i : i + self.batch_size])})[0]
                  for i in range(0, len(faces), self.batch_size)]
        s = np.concatenate(scores).astype(np.float64) if scores else np.zeros((0, 8))
        logits, va = s[:, :8], (s[:, 8:10].astype(np.float32) if s.shape[1] == 10 else None)
        e = np.exp(logits - logits.max(1, keepdims=True))
        return (e / e.sum(1, keepdims=True)).astype(np.float32), va
