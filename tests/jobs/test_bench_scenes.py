"""The scene and memory benchmarks' parts: generated bench media, cut comparison, RSS sampler."""

from __future__ import annotations

import itertools
import subprocess
import sys

from jobs.bench.memory import TreeSampler, measure
from jobs.bench.scenes import compare_cuts
from jobs.media.synthetic import generated_video
from pipeline.stages.scenes.detect import ScenesConfig, cut_times


def test_generated_bench_video_has_the_cuts_it_reports(tmp_path):
    path, cuts = generated_video(tmp_path / "bench.mp4", 20.0, size=(160, 96), fps=25, seed=3)
    assert len(cuts) >= 2 and all(b - a >= 37 for a, b in itertools.pairwise(cuts))
    found = [round(t * 25) for t in cut_times(path, ScenesConfig())]
    assert len(found) == len(cuts) and all(abs(a - b) <= 1 for a, b in zip(found, cuts)), found
    again, cuts_again = generated_video(path, 20.0, size=(160, 96), fps=25, seed=3)
    assert again == path and cuts_again == cuts  # cached: same file, same ground truth


def test_compare_cuts_allows_one_frame():
    per_file = compare_cuts({"a": [10, 50, 90]}, {"a": [11, 52, 90, 120]})
    assert per_file == [{"file": "a", "cuts": 3, "scenedetect_cuts": 4,
                         "only_emoforge": [50], "only_scenedetect": [52, 120]}]


def test_tree_sampler_sees_memory_of_a_child_process():
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(300 << 20); b[::4096] = b\"x\" * len(b[::4096]); "
            "time.sleep(1.5)'])")
    result = measure([sys.executable, "-c", code])
    assert result["returncode"] == 0
    assert result["peak_total_mib"] >= 300, result
    assert result["peak_mib_by_role"]["other"] >= 290  # the grandchild, not the driver
    assert result["peak_mib_by_role"]["driver"] < 200


def test_tree_sampler_peak_of_the_largest_single_process():
    """Two children, 300 and 100 MiB at once: the role's peak is their sum, the single-process
    peak the larger one (what bench scale reports per worker)."""
    code = ("import subprocess, sys; big = 'import time; b = bytearray({} << 20); "
            "b[::4096] = b\"x\" * len(b[::4096]); time.sleep(1.5)'; "
            "ps = [subprocess.Popen([sys.executable, '-c', big.format(n)]) for n in (300, 100)]; "
            "[p.wait() for p in ps]")
    proc = subprocess.Popen([sys.executable, "-c", code])
    with TreeSampler(proc.pid, interval_s=0.05) as sampler:
        proc.wait()
    assert sampler.peak["other"] >= 390, sampler.peak
    assert 290 <= sampler.peak_process["other"] < 390, sampler.peak_process


def test_tree_sampler_stops_cleanly_after_exit():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    with TreeSampler(proc.pid, interval_s=0.05) as sampler:
        proc.wait()
    assert sampler.samples >= 1
