"""A test-only ingest stage whose worker process dies on files named *poison*, like a decoder
crash (importable by Ray workers: tests/ is on their PYTHONPATH, see conftest.ray_local)."""

from __future__ import annotations

import os

from pipeline.stages.ingest.stage import IngestStage
from pipeline.stages.scenes.stage import ScenesStage


class CrashingIngest(IngestStage):
    def process_row(self, row: dict) -> dict:
        if os.path.basename(row["uri"]).startswith("poison"):
            os._exit(1)  # the whole worker process dies, as a segfaulting decoder would
        return super().process_row(row)


class CrashingScenes(ScenesStage):
    def process_row(self, row: dict) -> dict:
        if os.path.basename(row["uri"]).startswith("poison"):
            os._exit(1)
        return super().process_row(row)


class CrashingWindows(ScenesStage):
    """Scenes whose window tasks die on *poison* files (the row itself is split fine)."""

    def process_part(self, row: dict, part):
        if os.path.basename(row["uri"]).startswith("poison"):
            os._exit(1)
        return super().process_part(row, part)
