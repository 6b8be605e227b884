"""onnxruntime sessions for the ONNX backends (threads, execution providers), built in one place."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def execution_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The providers to ask for: `requested` as given, else CUDA when this onnxruntime build has it
    (onnxruntime-gpu), then CPU."""
    import onnxruntime as ort  # heavy: loaded on use

    if requested:
        return list(requested)
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def ort_session(path: str | Path | bytes, threads: int = 1, providers: Sequence[str] | None = None):
    """An onnxruntime.InferenceSession on `path` (or a serialized model) with `threads` intra-op
    threads.
    providers: None = CPU only; "auto" picks CUDA when available (see execution_providers)."""
    import onnxruntime as ort  # heavy: loaded on use

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if providers is None:
        chosen = ["CPUExecutionProvider"]
    elif providers == "auto":
        chosen = execution_providers()
    else:
        chosen = list(providers)
    model = path if isinstance(path, bytes) else str(path)
    session = ort.InferenceSession(model, options, providers=chosen)
    log.debug("onnxruntime session on %s with %s",
              "an in-memory model" if isinstance(path, bytes) else path, session.get_providers())
    return session


def graph_normalizes_input(path) -> bool:
    """True when the ONNX graph subtracts and scales its input itself (mxnet exports start with
    Sub/Mul nodes or a 'bn_data' batch norm); then the caller feeds raw 0..255 pixels."""
    import onnx  # heavy: loaded on use

    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    sub = any(n.name.startswith(("Sub", "_minus")) for n in nodes)
    mul = any(n.name.startswith(("Mul", "_mul")) for n in nodes)
    bn = any(n.name == "bn_data" for n in nodes[:3])
    return (sub and mul) or bn
