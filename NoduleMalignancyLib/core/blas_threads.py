"""NumPy's and SciPy's BLAS kept to one thread while a click is analyzed.

Why: the analysis makes many small BLAS calls (the world points of VOI grids, the evidence
maps' mass-conserving resampling), none big enough to gain from a second thread, while torch's
threads run the network on the same cores. OpenBLAS threads spin after each call and took
those cores from torch: on the 2-core machine, warm click 0.42-0.53 s with two BLAS threads
against 0.41-0.42 s with one, the network 0.25-0.33 against 0.24 s (quiet machine, alternated,
`nodule-malignancy bench --repeats 10`); beside another busy process the evidence resampling
took 0.08-0.40 s against 0.02-0.05 s (docs/benchmarks.md). Torch's own threads are not
touched. Process-wide while it lasts (OpenBLAS has no per-thread setting), restored after.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

__all__ = ["single_threaded_blas"]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Every OpenBLAS loaded now (NumPy's, SciPy's) at one thread inside the block."""
    # A new controller each time (about 1 ms): it finds the libraries loaded since the last.
    with ThreadpoolController().select(internal_api="openblas").limit(limits=1):
        yield
