"""Test helper: run a curate driver and SIGKILL it once its first shard commit is on disk."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def kill_after_first_commit(cmd: list[str], out: Path, env: dict, timeout_s: float = 300) -> int:
    """Start `cmd` (a curate writing to `out`), SIGKILL it as soon as `out/_commits` holds a
    record, and return how many commit records the killed run left."""
    driver = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + timeout_s
        while time.time() < deadline and not list((out / "_commits").glob("*.json")):
            time.sleep(0.1)
        assert driver.poll() is None, "the run finished before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    return len(list((out / "_commits").glob("*.json")))
