"""The pipeline's stages in pipeline order, by runner stage name: their classes (and so their
`Config` dataclasses) by import; a custom stage by "module:Class"."""

from __future__ import annotations

import importlib

from pipeline.stages.analyze.stage import AnalyzeStage
from pipeline.stages.contract import Stage
from pipeline.stages.faces.stage import FacesStage
from pipeline.stages.ingest.stage import IngestStage
from pipeline.stages.scenes.stage import ScenesStage

STAGE_CLASSES: dict[str, type[Stage]] = {
    "ingest": IngestStage,
    "scenes": ScenesStage,
    "faces": FacesStage,
    "analyze": AnalyzeStage,
}


def load_stage_class(name: str) -> type[Stage]:
    """A stage class by runner stage name ("faces") or "module:Class" (a custom stage)."""
    if name in STAGE_CLASSES:
        return STAGE_CLASSES[name]
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)
