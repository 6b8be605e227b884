"""Bundled emotion backend (option): facex's 7-class tflite model, run with ai-edge-litert.

Input: 200x200 gray faces replicated to 3 channels, scaled to [0, 1] (as facex does); outputs are
reordered to FER_CLASSES so fer and facex share one class list. The shipped file is weight-only
quantized (uint8 kernels run by hybrid kernels outside XNNPACK, about 30 ms a face); it is loaded
dequantized to float32 (pipeline.models.tflite_float), which XNNPACK runs whole in about 8 ms a
face. Against the hybrid execution, on 132 real faces: mean |probability change| 0.005, top-1
the same on 96% (the hybrid kernels' own int8 activation rounding moves them by 0.004 / 98.5%
between LiteRT's two CPU paths). `quantized=True` runs the file as shipped.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.models.emotion.fer import FER_CLASSES
from pipeline.models.registry import ModelSpec, register, resolve
from pipeline.models.tflite_float import dequantized_model

log = logging.getLogger(__name__)

SPEC = register(
    ModelSpec(
        task="emotion",
        backend="facex",
        kind="bundled",
        package="facex",
        files=("assets/model_optimized.tflite",),
        license="MIT",
        source="PyPI facex==1.1.0",
        version="1",
        description="7-class expression classifier, 200x200, tflite",
    )
)
FACEX_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
TO_FER = [FACEX_CLASSES.index(c) for c in FER_CLASSES]
INPUT_SIZE = 200


class FacexEmotion:
    """__call__ / predict: uint8[N,H,W,3] RGB faces -> float32[N,7] probabilities (FER_CLASSES)."""

    classes = FER_CLASSES
    spec = SPEC

    def __init__(self, num_threads: int = 1, quantized: bool = False):
        from ai_edge_litert.interpreter import Interpreter  # heavy: loaded on use

        path = str(resolve(SPEC))
        if quantized:
            self.interp = Interpreter(model_path=path, num_threads=num_threads)
        else:
            self.interp = Interpreter(model_content=dequantized_model(path),
                                      num_threads=num_threads)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        shape = tuple(self.inp["shape"])
        if shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or self.out["shape"][-1] != len(FACEX_CLASSES):
            raise ValueError(f"{resolve(SPEC)}: expected input [1,200,200,3] and 7 outputs, "
                             f"got {shape} -> {tuple(self.out['shape'])}")

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        import cv2  # heavy: loaded on use

        probs = np.empty((len(faces), len(FER_CLASSES)), np.float32)
        for i, face in enumerate(faces):
            gray = cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_RGB2GRAY)
            gray = cv2.resize(gray, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
            x = np.repeat(gray[None, :, :, None], 3, axis=3).astype(np.float32) / 255.0
            self.interp.set_tensor(self.inp["index"], x)
            self.interp.invoke()
            probs[i] = self.interp.get_tensor(self.out["index"])[0][TO_FER]
        return probs

    def predict(self, faces: np.ndarray) -> tuple[np.ndarray, None]:
        return self(faces), None
