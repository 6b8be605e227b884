"""Tiny ONNX graphs with buffalo_l's interfaces (names, shapes, output counts) and known answers.

- det_10g.onnx: input 'input.1' [1,3,?,?]; 9 outputs (scores, boxes, keypoints for strides 8, 16,
  32; 2 anchors per cell), named like buffalo_l's. Each stride's head average-pools its cells: the
  stride-8 head fires (anchor 1) on cells that are red, stride 16 (anchor 0) on green cells,
  stride 32 (anchor 1) on blue cells; box distances and keypoints are constants (stride units).
- 1k3d68.onnx / 2d106det.onnx: input 'data' [1,3,192,192] -> 'fc1' [1,3309] / [1,212]; they
  start with Sub and Mul nodes (normalize their own input, like the mxnet exports). Outputs are
  constants, except point 0's x of 1k3d68, which adds K_MEAN x the crop's normalized mean red.
- w600k_r50.onnx: input 'input.1' [1,3,112,112] -> '683' [1,512]: 4x4 average pooling then a
  fixed random projection (an image-dependent embedding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SCORE_NAMES = ("448", "471", "494")
BOX_NAMES = ("451", "474", "497")
KPS_NAMES = ("454", "477", "500")
STRIDES = (8, 16, 32)
FIRING = {8: (0, 1), 16: (1, 0), 32: (2, 1)}  # stride -> (colour channel, anchor that fires)
DIST = np.array([0.5, 0.25, 1.5, 1.25], np.float32)  # left, top, right, bottom (stride units)
KPS = np.array([[0.2, 0.3], [0.8, 0.3], [0.5, 0.6], [0.3, 0.9], [0.7, 0.9]], np.float32)
K_MEAN = 0.5  # 1k3d68 point 0: x += K_MEAN * mean normalized red of the crop
ARC_SEED = 7


def _model(nodes, inputs, outputs, inits, path: Path) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _const(name: str, value: np.ndarray):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def build_scrfd(path: Path) -> Path:
    from onnx import TensorProto, helper

    nodes, inits, outs = [], [], {}
    for s in STRIDES:
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"pool{s}"],
                                      kernel_shape=[s, s], strides=[s, s]))
        channel, anchor = FIRING[s]
        for kind, width in (("score", 1), ("box", 4), ("kps", 10)):
            w = np.zeros((2 * width, 3, 1, 1), np.float32)
            b = np.zeros(2 * width, np.float32)
            if kind == "score":
                b[:] = -15.0
                # 10 * (own channel - mean of the other two) - 15: ~0.993 on a pure-colour cell
                w[anchor, :, 0, 0] = -5.0
                w[anchor, channel, 0, 0] = 10.0
            elif kind == "box":
                b[:] = np.tile(DIST, 2)
            else:
                b[:] = np.tile(KPS.ravel(), 2)
            inits += [_const(f"w_{kind}{s}", w), _const(f"b_{kind}{s}", b),
                      _const(f"shape_{kind}{s}", np.array([-1, width], np.int64))]
            conv = f"conv_{kind}{s}"
            nodes.append(helper.make_node("Conv", [f"pool{s}", f"w_{kind}{s}", f"b_{kind}{s}"],
                                          [conv]))
            if kind == "score":
                nodes.append(helper.make_node("Sigmoid", [conv], [conv + "_sig"]))
                conv += "_sig"
            nodes.append(helper.make_node("Transpose", [conv], [conv + "_t"], perm=[0, 2, 3, 1]))
            name = {"score": SCORE_NAMES, "box": BOX_NAMES, "kps": KPS_NAMES}[kind][
                STRIDES.index(s)]
            nodes.append(helper.make_node("Reshape", [conv + "_t", f"shape_{kind}{s}"], [name]))
            outs[name] = width
    order = SCORE_NAMES + BOX_NAMES + KPS_NAMES
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, outs[n]]) for n in order]
    return _model(nodes, inputs, outputs, inits, path)


def landmark_constants(dim: int, count: int) -> np.ndarray:
    """The constant prediction float32[count, dim] in [-1, 1] crop units: for 68 points a real
    mean face (insightface's meanshape_68) fitted into [-0.6, 0.6]; otherwise a spiral."""
    if count == 1103:
        from pipeline.models.pose import generic_face

        face = generic_face()[:, :2].copy()
        face[:, 1] *= -1 if face[17:27, 1].mean() > face[8, 1] else 1  # brows above the chin
        face -= (face.max(0) + face.min(0)) / 2
        face *= 0.6 / np.abs(face).max()
        rest = np.full((count - 68, dim), 5.0, np.float32)  # must be ignored (not the last 68)
        out = np.concatenate([rest, np.hstack([face, np.zeros((68, dim - 2))])])
        return out.astype(np.float32)
    t = np.linspace(0, 4 * np.pi, count)
    pts = np.stack([0.5 * t / t.max() * np.cos(t), 0.5 * t / t.max() * np.sin(t)], 1)
    return pts.astype(np.float32)


def build_landmark(path: Path, width: int) -> Path:
    from onnx import TensorProto, helper

    dim = 3 if width >= 3000 else 2
    const = landmark_constants(dim, width // dim).reshape(-1)
    w = np.zeros((3, width), np.float32)
    if width >= 3000:
        w[0, (width // dim - 68) * dim] = K_MEAN  # point 0 (of the last 68), x, from mean red
    inits = [_const("mean", np.array(127.5, np.float32)),
             _const("inv_std", np.array(1 / 128, np.float32)), _const("w", w), _const("b", const)]
    nodes = [helper.make_node("Sub", ["data", "mean"], ["centred"], name="Sub_0"),
             helper.make_node("Mul", ["centred", "inv_std"], ["normed"], name="Mul_1"),
             helper.make_node("GlobalAveragePool", ["normed"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["fc1"])]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])]
    outputs = [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, width])]
    return _model(nodes, inputs, outputs, inits, path)


def arcface_projection() -> np.ndarray:
    return np.random.default_rng(ARC_SEED).normal(size=(48, 512)).astype(np.float32)


def build_arcface(path: Path) -> Path:
    from onnx import TensorProto, helper

    inits = [_const("proj", arcface_projection())]
    nodes = [helper.make_node("AveragePool", ["input.1"], ["pool"], kernel_shape=[28, 28],
                              strides=[28, 28]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("MatMul", ["flat", "proj"], ["683"])]
    inputs = [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])]
    outputs = [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, 512])]
    return _model(nodes, inputs, outputs, inits, path)


def arcface_reference(aligned: np.ndarray) -> np.ndarray:
    """What the tiny ArcFace graph computes, in numpy: uint8[112,112,3] RGB -> float[512]."""
    x = (aligned.astype(np.float64) - 127.5) / 127.5
    pooled = x.reshape(4, 28, 4, 28, 3).mean((1, 3)).transpose(2, 0, 1).reshape(-1)  # C, H, W
    return pooled @ arcface_projection().astype(np.float64)


def build_buffalo_l(root: Path) -> Path:
    """All four files under a model root, in the registry's layout. Returns root."""
    build_scrfd(root / "face_detection" / "insightface" / "det_10g.onnx")
    build_landmark(root / "face_landmarks" / "insightface" / "1k3d68.onnx", 3309)
    build_landmark(root / "face_landmarks" / "insightface" / "2d106det.onnx", 212)
    build_arcface(root / "identity" / "arcface" / "w600k_r50.onnx")
    return root
