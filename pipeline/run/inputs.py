"""A run's input files: absolute uris and their content hashes (cached; in the driver for small
inputs, as Ray tasks for large ones)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from catalog import fs
from pipeline.stages.ingest import hashing

DRIVER_HASH_BYTES = 256 * 2**20  # inputs to hash up to this size are read by the driver


def absolute_uri(uri: str | os.PathLike) -> str:
    """Local paths absolute (symbolic links kept, so a dangling one still fails as itself),
    object-store URIs as given: a catalog's uris read the same from any working directory."""
    text = str(uri)
    if "://" in text:
        return text
    return os.path.abspath(text)


def hash_inputs(root: fs.Root, uris: list[str]) -> list[dict]:
    """Content hashes for every input, reading only files whose (size, mtime) changed: in the
    driver (4 threads) when they hold at most DRIVER_HASH_BYTES, where starting Ray workers
    would cost more than reading, else as Ray tasks across the cluster."""
    cache = hashing.load_cache(root)
    todo, rows, todo_bytes = [], [], 0
    for uri in uris:
        key = hashing.stat_key(uri)
        hit = cache.get(uri)
        if key is not None and hit is not None and (hit[0], hit[1]) == key:
            rows.append({"uri": uri, "size_bytes": key[0], "mtime_ns": key[1], "content_sha256": hit[2], "hash_error": None})
        else:
            todo.append(uri)
            todo_bytes += key[0] if key else 0
    if not todo:
        return rows
    if todo_bytes <= DRIVER_HASH_BYTES:
        with ThreadPoolExecutor(4, thread_name_prefix="hash") as pool:
            fresh = list(pool.map(hashing.hash_file, todo))
    else:
        import ray  # heavy: only for inputs too large for the driver

        hash_remote = ray.remote(num_cpus=0.5, **fs.worker_options())(hashing.hash_file)
        fresh = ray.get([hash_remote.remote(u) for u in todo])
    hashing.save_cache(root, fresh)
    return rows + fresh
