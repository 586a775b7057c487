"""Latency and memory of one click on the real sample CT (prints figures; not a timed test)."""

from __future__ import annotations

import platform
import resource
import time

import numpy as np
import SimpleITK as sitk
import torch

from .core.analysis import analyze_point
from .core.ensemble import Ensemble
from .core.geometry import ImageGeometry
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
