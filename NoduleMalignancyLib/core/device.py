"""Which torch device to run on: one resolver for the UI, the CLI, the ensemble and training.

Why one: the names a user types or picks (``auto``, ``CPU``, ``GPU``, ``cuda:1``) mean the same
on every surface, and "GPU requested but none here" is the same clear error everywhere.
"""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["DeviceError", "device_choice", "resolve_device"]


class DeviceError(InputError):
    """The requested device does not exist here; the message says what to choose instead."""


def device_choice(device: str | None = "auto") -> str:
    """Normalise a device name: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (``GPU`` = ``cuda``).

    :raises DeviceError: for an unknown name, or CUDA asked for where PyTorch has none.
    """
    name = (device or "auto").strip().lower()
    if name == "gpu":
        name = "cuda"
    if name not in ("auto", "cpu") and not (
        name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise DeviceError(f"Unknown device {device!r}: use auto, CPU or GPU (cuda, cuda:N).")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(
            f"Device {device!r} requested but no CUDA device is available to PyTorch here; "
            "choose auto or CPU."
        )
    return name


def resolve_device(device: str | None = "auto") -> torch.device:
    """The torch device of a choice: ``auto`` = the first CUDA device when available, else CPU."""
    name = device_choice(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
