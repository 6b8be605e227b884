"""Shared pytest set-up: this file's folder (tests/) is put on sys.path by pytest, so test modules
import the shared helpers as `from media import real_media` (generated media: jobs.media)."""

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).parent


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray with 2 CPUs per test session (tests/ on the workers' PYTHONPATH so test-only
    stages import there too)."""
    import ray

    if not ray.is_initialized():
        path = os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")])
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
