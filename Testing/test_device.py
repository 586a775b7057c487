"""One device resolver for every surface, and the GPU out-of-memory fallback that sticks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from NoduleMalignancyLib.core.device import DeviceError, device_choice, resolve_device
from NoduleMalignancyLib.core.model.ensemble import Ensemble


def test_device_names_mean_the_same_everywhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_choice(None) == device_choice("") == device_choice(" Auto ") == "auto"
    assert device_choice("CPU") == "cpu"
    assert resolve_device("auto") == torch.device("cpu")
    for bad in ("tpu", "cuda:x", "gpu0"):
        with pytest.raises(DeviceError, match="Unknown device"):
            device_choice(bad)
    for absent in ("GPU", "cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="no CUDA device"):
            device_choice(absent)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_choice("GPU") == "cuda" and device_choice("cuda:1") == "cuda:1"
    assert resolve_device("auto") == torch.device("cuda")


def test_out_of_memory_fallback_stays_on_the_cpu(tiny_dir, monkeypatch, slicer_runtime):
    """After one GPU out-of-memory, the next click with the same choice must not go back."""
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    placed = []

    def fake_place(self, device):  # no CUDA here: record where the models would go
        placed.append(device.type)
        self.device = device

    monkeypatch.setattr(Ensemble, "_place", fake_place)
    ensemble = Ensemble.load(tiny_dir, device="auto")
    assert placed == ["cuda"]

    def fake_run(self, x):
        if self.device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return "ran on cpu"

    monkeypatch.setattr(Ensemble, "_run", fake_run)
    with pytest.warns(RuntimeWarning, match="falling back to CPU"):
        assert ensemble.run(np.zeros((1, 3, 4, 4, 4), np.float32)) == "ran on cpu"
    assert ensemble.device.type == "cpu" and ensemble.fell_back_to_cpu
    logic = NoduleMalignancyLogic(ensemble=ensemble)
    assert logic.ensemble("auto") is ensemble
    assert placed == ["cuda", "cpu"], "the ensemble went back to the GPU"
    assert ensemble.run(np.zeros((1, 3, 4, 4, 4), np.float32)) == "ran on cpu"
    # Choosing the GPU explicitly is a new choice: it tries the GPU again.
    logic.ensemble("GPU")
    assert placed[-1] == "cuda" and not ensemble.fell_back_to_cpu


def test_single_threaded_blas_holds_numpy_s_blas_at_one_thread_and_restores_it():
    """core/blas_threads.py: one OpenBLAS thread inside an analysis, the setting restored."""
    import numpy  # noqa: F401  (its OpenBLAS loaded)
    from threadpoolctl import ThreadpoolController

    from NoduleMalignancyLib.core.blas_threads import single_threaded_blas

    def openblas_threads():
        return [
            i["num_threads"]
            for i in ThreadpoolController().info()
            if i["internal_api"] == "openblas"
        ]

    before = openblas_threads()
    assert before, "numpy's OpenBLAS is visible to threadpoolctl"
    with single_threaded_blas():
        assert set(openblas_threads()) == {1}
    assert openblas_threads() == before
