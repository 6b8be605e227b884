"""Real test media for tests: files from registry packages (jobs/media/sources.py), cached."""

from __future__ import annotations

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
