"""Test-only stages for the fault tests on a multi-node cluster (tests/pipeline/run/test_faults.py):
the real ingest, slowed down and reporting where it runs, or failing to set up once. Markers go
under $EMOFORGE_TEST_FAULTS/<hash of the catalog path>, so every test has its own."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from pipeline.stages.ingest.stage import IngestStage

SLOW_S = 1.5


def marker_dir(catalog: str) -> Path:
    folder = Path(os.environ["EMOFORGE_TEST_FAULTS"]) / hashlib.sha256(str(catalog).encode()).hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class SlowIngest(IngestStage):
    """Ingest that writes `started-<node id>-<file name>` and takes SLOW_S seconds per file."""

    def process_row(self, row: dict) -> dict:
        import ray

        node = ray.get_runtime_context().get_node_id()
        (marker_dir(self.context.catalog) / f"started-{node}-{os.path.basename(row['uri'])}").touch()
        time.sleep(SLOW_S)
        return super().process_row(row)


class FlakySetupIngest(IngestStage):
    """Ingest whose first set-up in a run raises (a model file on a flaky network mount)."""

    def setup(self) -> None:
        flag = marker_dir(self.context.catalog) / "setup-failed-once"
        try:
            flag.open("x").close()
        except FileExistsError:
            return super().setup()
        raise OSError("transient: the model mount did not answer")


class GpuIngest(IngestStage):
    """Ingest run as a model stage (an actor pool) that writes `gpu-<node id>-<gpu ids>-<file>`:
    where `[runner.stage_resources]` with `num_gpus` placed it."""

    uses_models = True

    def process_row(self, row: dict) -> dict:
        import ray

        context = ray.get_runtime_context()
        ids = "_".join(str(i) for i in ray.get_gpu_ids()) or "none"
        name = f"gpu-{context.get_node_id()}-{ids}-{os.path.basename(row['uri'])}"
        (marker_dir(self.context.catalog) / name).touch()
        return super().process_row(row)
