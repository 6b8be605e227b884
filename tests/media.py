"""Real test media for tests: files from registry packages (jobs/media/sources.py), cached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.media.sources import MediaSourceError, media_file


def real_media(name: str) -> Path:
    """The cached real media file `name` (see jobs.media.sources.KNOWN_MEDIA); the test is
    skipped, with the reason, when the package registry cannot be reached."""
    try:
        return media_file(name)
    except MediaSourceError as exc:
        pytest.skip(f"real media {name} unavailable: {exc}")


HEAP_FILLS = ("", "33", "200")  # MALLOC_PERTURB_ values: glibc fills new heap memory with them


def written_under_heap_fills(code: str, folder: Path, files_per_process: int = 1) -> list[bytes]:
    """The bytes of the files `python -c code PATH...` writes, run in a fresh process for each of
    HEAP_FILLS (from the repository root): an encoder that reads uninitialised memory writes
    something else under another fill."""
    written = []
    for fill in HEAP_FILLS:
        paths = [folder / f"heap_{fill or 'plain'}_{k}.mp4" for k in range(files_per_process)]
        done = subprocess.run([sys.executable, "-c", code, *map(str, paths)],
                              cwd=Path(__file__).resolve().parents[1],
                              env={**os.environ, "MALLOC_PERTURB_": fill},
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        written += [path.read_bytes() for path in paths]
    return written
