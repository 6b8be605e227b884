"""Weight-only quantized tflite models rewritten to float32 in memory, so XNNPACK runs every op.

Old TensorFlow "weight quantization" stores uint8/int8 conv and dense kernels and runs those ops
with hybrid kernels (activations quantized to int8 on the fly) outside the XNNPACK delegate,
which splits the graph into many small delegated pieces. Dequantizing the constant weights
(w = scale * (q - zero_point), per tensor or per channel) and dropping the DEQUANTIZE ops gives
a plain float32 graph that XNNPACK runs whole: facex's MobileNetV2 (200x200) goes from about
31 ms to about 10 ms a face on one core. The outputs are those of the float network the weights
were quantized from, without the hybrid kernels' int8 rounding of activations (facex: max
|probability change| 0.05-0.1 on real faces, see `emoforge bench pipeline --emotion-strides`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_INT_TYPES = {3: np.uint8, 9: np.int8}  # schema TensorType UINT8, INT8
_FLOAT32 = 0
_DEQUANTIZE = 6
_CONV_2D = 3
_DEPTHWISE_CONV_2D = 4


def _dequantized(tensor, data: np.ndarray, hybrid: bool) -> np.ndarray:
    """float32 values of a constant quantized tensor (per-tensor or per-channel parameters).
    `hybrid`: the tensor feeds a hybrid op, whose kernels read the bytes as int8 whatever the
    declared type (uint8 included) and ignore the zero point; DEQUANTIZE honours the declared
    type and zero point."""
    q = tensor.quantization
    shape = [int(s) for s in tensor.shape]
    kind = np.int8 if hybrid else _INT_TYPES[tensor.type]
    values = np.frombuffer(data.tobytes(), kind).astype(np.float32).reshape(shape)
    scale = np.asarray(q.scale, np.float32)
    if hybrid:
        zero = np.zeros(scale.shape, np.float32)
    else:
        zero = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float32)
        zero = np.broadcast_to(zero, scale.shape)
    if scale.size > 1:  # per channel along quantizedDimension
        view = [1] * len(shape)
        view[int(q.quantizedDimension)] = scale.size
        scale, zero = scale.reshape(view), zero.reshape(view)
    return (values - zero) * scale


def _dequantize(model) -> int:
    """Turn the constant quantized tensors of a schema ModelT into float32 in place and drop the
    DEQUANTIZE ops that read them; returns how many buffers were converted."""
    converted: dict[int, np.ndarray] = {}  # buffer index -> float32 values
    opcodes = _opcodes(model)
    for graph in model.subgraphs:
        dequantize_inputs = {int(op.inputs[0]) for op in graph.operators
                             if opcodes[op.opcodeIndex] == _DEQUANTIZE and len(op.inputs)}
        for index, tensor in enumerate(graph.tensors):
            data = model.buffers[tensor.buffer].data if tensor.buffer else None
            q = tensor.quantization
            if (tensor.type not in _INT_TYPES or data is None or len(data) == 0 or q is None
                    or q.scale is None or len(q.scale) == 0):
                continue
            if tensor.buffer not in converted:
                converted[tensor.buffer] = _dequantized(tensor, np.asarray(data),
                                                        index not in dequantize_inputs)
            tensor.type, tensor.quantization = _FLOAT32, None
        # DEQUANTIZE of a now-float constant: its consumers read the constant itself
        alias: dict[int, int] = {}
        kept = []
        for op in graph.operators:
            source = int(op.inputs[0]) if len(op.inputs) else -1
            if (opcodes[op.opcodeIndex] == _DEQUANTIZE and source >= 0
                    and graph.tensors[source].type == _FLOAT32
                    and graph.tensors[source].buffer in converted):
                alias[int(op.outputs[0])] = source
                continue
            kept.append(op)
        for op in kept:
            op.inputs = np.array([alias.get(int(i), int(i)) for i in op.inputs], np.int32)
        graph.operators = kept
        graph.outputs = np.array([alias.get(int(i), int(i)) for i in graph.outputs], np.int32)
    for index, values in converted.items():
        _set_buffer(model, index, values)
    return len(converted)


def _opcodes(model) -> list[int]:
    return [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]


def _set_buffer(model, index: int, values: np.ndarray) -> None:
    model.buffers[index].data = np.frombuffer(
        np.ascontiguousarray(values, np.float32).tobytes(), np.uint8)


def _load(path: str | Path):
    from ai_edge_litert import schema_py_generated as schema  # heavy: loaded on use

    return schema.ModelT.InitFromPackedBuf(Path(path).read_bytes(), 0)


def _pack(model) -> bytes:
    import flatbuffers  # heavy: loaded on use

    builder = flatbuffers.Builder(1 << 20)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def dequantized_model(path: str | Path) -> bytes:
    """The tflite flatbuffer at `path` with every constant uint8/int8 tensor that carries
    quantization parameters turned into float32 and every DEQUANTIZE of a constant removed (its
    consumers read the float tensor directly). Raises ValueError when the model has no such
    weights (nothing to gain: load the file as it is)."""
    model = _load(path)
    count = _dequantize(model)
    if not count:
        raise ValueError(f"{path}: no quantized constant weights to dequantize")
    log.debug("%s: %d weight tensors dequantized to float32", path, count)
    return _pack(model)


def with_conv_weights(path: str | Path, kernels: list[tuple[np.ndarray, np.ndarray]],
                      tolerance: float = 0.05) -> bytes:
    """The tflite model at `path`, dequantized, with the kernel and bias of every CONV_2D and
    DEPTHWISE_CONV_2D replaced by the float weights they were converted from.

    kernels: (kernel, bias) per conv op in any order, tflite layout: conv float[O,KH,KW,I],
    depthwise float[1,KH,KW,C], bias float[O] (BatchNormalization already folded in, as the
    converter did). Each op takes the unused candidate of its shapes closest to its current
    values, which must lie within `tolerance` x the kernel's largest |value| (the shipped
    values are the candidate, quantized or rounded) and whose bias lies within the same
    relative distance. ValueError when an op finds none or a candidate is left over."""
    model = _load(path)
    _dequantize(model)
    opcodes = _opcodes(model)
    unused = list(range(len(kernels)))
    assigned: dict[int, np.ndarray] = {}  # buffer index -> values (constants may be shared)
    for graph in model.subgraphs:
        for number, op in enumerate(graph.operators):
            if opcodes[op.opcodeIndex] not in (_CONV_2D, _DEPTHWISE_CONV_2D):
                continue
            w_tensor, b_tensor = graph.tensors[int(op.inputs[1])], graph.tensors[int(op.inputs[2])]
            current = np.frombuffer(model.buffers[w_tensor.buffer].data.tobytes(), np.float32)
            current = current.reshape([int(d) for d in w_tensor.shape])
            bias_now = np.frombuffer(model.buffers[b_tensor.buffer].data.tobytes(), np.float32)
            best, best_err = None, np.inf
            for k in unused:
                kernel, bias = kernels[k]
                if kernel.shape != current.shape or bias.shape != bias_now.shape:
                    continue
                scale = max(float(np.abs(current).max()), 1e-12)
                err = max(float(np.abs(kernel - current).max()),
                          float(np.abs(bias - bias_now).max(initial=0.0))) / scale
                if err < best_err:
                    best, best_err = k, err
            if best is None or best_err > tolerance:
                raise ValueError(
                    f"{path}: op {number} ({w_tensor.name.decode()}, {list(current.shape)}) "
                    f"matches no given kernel within {tolerance} (closest: {best_err:.3g})")
            unused.remove(best)
            for tensor, values in ((w_tensor, kernels[best][0]), (b_tensor, kernels[best][1])):
                values = np.asarray(values, np.float32)
                if tensor.buffer in assigned and not np.array_equal(assigned[tensor.buffer],
                                                                    values):
                    raise ValueError(f"{path}: constant {tensor.name.decode()} is shared by "
                                     "ops given different values")
                assigned[tensor.buffer] = values
                _set_buffer(model, tensor.buffer, values)
    if unused:
        raise ValueError(f"{path}: {len(unused)} given kernels match no conv op "
                         f"(shapes {[tuple(kernels[k][0].shape) for k in unused]})")
    return _pack(model)
