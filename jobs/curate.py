"""Curation as one call: the job's stages over its inputs through the runner, then the persons
post-pass (identity clusters over the whole catalog) when faces ran. Used by `emoforge curate`,
the demo, `bench learn` and the test fixtures, so they all build catalogs the same way."""

from __future__ import annotations

from typing import Any

from jobs.spec import JobSpec
from pipeline.persons.catalog_pass import assign_persons
from pipeline.run import runner


def curate(spec: JobSpec, inputs: list[str] | None = None, recompute: set[str] | None = None,
           commercial_only: bool = False, persons: bool = True,
           release_ray: bool = False) -> tuple[Any, dict | None]:
    """Run `spec` over `inputs` (default: the spec's inputs as given) into `spec.out`.

    `release_ray`: when this call connected to Ray, disconnect once done (stopping the local Ray
    it started: its idle workers would share the cores of what this process runs next, such as
    training); a Ray the caller was already connected to stays.

    Returns the runner's RunResult and the persons pass summary (None when it did not run:
    `persons` false or no faces stage)."""
    connected_before = runner.ray_connected()
    result = runner.run(spec, inputs, set(recompute or ()), commercial_only)
    persons_summary = assign_persons(spec.out) if persons and "faces" in spec.stages else None
    if release_ray and not connected_before:
        runner.stop_ray()
    return result, persons_summary
