"""Latency and memory of one click on the real sample CT (prints figures; not a timed test).

``bench`` times clicks in one process (weights loaded, the CT read); ``bench --cold`` times
what a user waits for: ``nodule-malignancy analyze`` of the sample's DICOM archive as shipped,
each run a fresh process, split into its stages (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from .core.geometry import ImageGeometry
from .core.model.ensemble import Ensemble
from .core.nodule.analysis import analyze_point
from .files.samples import nodule_points_lps, sample_path


def run_benchmark(args) -> dict:
    torch.set_num_threads(args.threads)
    image = sitk.ReadImage(str(sample_path(args.sample)))
    array, geometry = sitk.GetArrayFromImage(image), ImageGeometry.from_sitk(image)
    point = np.array(nodule_points_lps(args.sample)[0][1])
    t = time.perf_counter()
    ensemble = Ensemble.load(args.models, device=args.device)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    analyze_point(array, geometry, point, ensemble)
    first_s = time.perf_counter() - t
    runs, passes = [], 0
    for _ in range(args.repeats):
        if ensemble.device.type == "cuda":
            torch.cuda.synchronize()
        result = analyze_point(array, geometry, point, ensemble)
        runs.append(result.timings_s)
        passes = result.context_passes
    keys = list(runs[0])
    median = {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in keys}
    figures = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads, "
        f"device {ensemble.device}",
        "folds": len(ensemble.models),
        "model_version": ensemble.version,
        "weights_load_s": load_s,
        "cold_click_s": load_s + first_s,
        "warm_click_median_s": median["total"],
        "warm_split_median_s": median,
        "context_passes": passes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if ensemble.device.type == "cuda":
        figures["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for k, v in figures.items():
        print(f"{k:>22}: {v if not isinstance(v, float) else round(v, 4)}")
    return figures


# The cold split as printed: (label, where in the --timings JSON). ``analyze`` imports torch
# and the analysis modules in a thread while it reads the CT and builds its lung mask
# (cli.ANALYZE_IMPORTS): "imports" is what is left to wait for after those two.
COLD_SPLIT = (
    ("python start-up, CLI", None),
    ("read the CT", ("stages", "read")),
    ("lung mask", ("stages", "lung_mask")),
    ("imports (the rest)", ("stages", "imports")),
    ("load the weights", ("stages", "weights")),
    ("other checks", ("analysis", "checks")),
    ("VOI sampling", ("analysis", "voi_sampling")),
    ("network", ("analysis", "network")),
    ("measurements", ("analysis", "measurements")),
    ("maps onto the CT", ("analysis", "evidence_resampling")),
    ("writing", ("stages", "writing")),
)


def cold_ct(sample: str) -> Path:
    """The sample as shipped (``<data>/lidc_ct/<name>.tar.gz``), else its decoded copy."""
    from .core.settings import data_dir
    from .files.samples import CT_SUBFOLDER, SAMPLES

    root = data_dir(None)
    archive = root / CT_SUBFOLDER / SAMPLES[sample].archive if root is not None else None
    return archive if archive is not None and archive.is_file() else sample_path(sample)


def cold_run(ct: Path, point, models: str | None, device: str) -> dict[str, float]:
    """One ``analyze`` in a fresh process: wall seconds per stage of :data:`COLD_SPLIT`."""
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp) / "timings.json"
        command = [sys.executable, "-m", "NoduleMalignancyLib.cli", "analyze", "--ct", str(ct)]
        command += ["--point", ",".join(f"{v:.4f}" for v in point), "--out", f"{tmp}/out"]
        command += ["--timings", str(timings), "--device", device]
        command += ["--models", models] if models else []
        t = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=os.environ.copy())
        total = time.perf_counter() - t
        seconds = json.loads(timings.read_text())
    split = {label: seconds[a][b] for label, (a, b) in COLD_SPLIT[1:] if b in seconds[a]}
    within = sum(seconds["stages"].values())
    split["python start-up, CLI"] = total - within
    split["total"] = total
    return split


def run_cold_benchmark(args) -> dict:
    """Median of ``args.repeats`` cold ``analyze`` runs and their split (printed)."""
    ct = cold_ct(args.sample)
    point = np.array(nodule_points_lps(args.sample)[0][1])
    runs = [cold_run(ct, point, args.models, args.device) for _ in range(args.repeats)]
    median = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
    load = os.getloadavg()[0]
    print(f"cold analyze of {ct.name}, {args.repeats} fresh processes, load average {load:.1f}")
    for label, _ in COLD_SPLIT:
        print(f"{label:>22}: {median[label]:.3f} s")
    print(f"{'total (median)':>22}: {median['total']:.3f} s")
    each = ", ".join(f"{r['total']:.2f}" for r in runs)
    print(f"{'total (each run)':>22}: {each} s")
    return {"median": median, "runs": runs, "load_average": load}
