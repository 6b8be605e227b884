"""Model backends (a leaf layer shared by pipeline stages and training) and their registry."""

from pipeline.models.registry import (
    MissingWeightsError,
    ModelSpec,
    all_specs,
    cache_root,
    get_spec,
    model_root,
    register,
    resolve,
)

__all__ = [
    "MissingWeightsError",
    "ModelSpec",
    "all_specs",
    "cache_root",
    "get_spec",
    "model_root",
    "register",
    "resolve",
]
