"""Atomic file writes: a reader (or a resumed run after kill -9) sees the old file or the new one.

One home for the temp-file-and-rename pattern that the training checkpoints, the run tables,
the manifest, the sample cache and the batch CSVs (files/csv_cells.write_csv) all need.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "finite_json", "sha256_of", "write_json"]


@contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``target``, renamed onto it when the block ends without error.

    The temporary name keeps the whole file name as suffix (``.<uuid>.ct.nrrd``), so writers
    that choose the format by extension still do. Unique per call: parallel folds and
    processes never share one. The parent folder is created.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{uuid.uuid4().hex}.{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data, default: Callable | None = None) -> Path:
    """``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=default) + "\n")
    return Path(path)


def sha256_of(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (weights, indexes)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def finite_json(o):
    """NaN/inf -> None, recursively, numpy numbers as numbers, keys as text (strict JSON)."""
    if isinstance(o, dict):
        return {str(k): finite_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite_json(v) for v in o]
    if isinstance(o, (float, np.floating)):
        return float(o) if np.isfinite(o) else None
    if isinstance(o, np.integer):
        return int(o)
    return o
