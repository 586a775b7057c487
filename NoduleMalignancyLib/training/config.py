"""What defines a training run: its curriculum phases and settings (``config.json``).

Why apart from the loop: the CLI, the export and the experiments read a run's configuration
without training anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch

from ..core.config import ATTRIBUTES, TINY_NETWORK, NetworkConfig, VoiConfig
from ..core.model.network import build_network
from .augment import AugmentConfig
from .dataset import DEFAULT_CANVAS_ZYX

# Width presets for --width (CPU cost is dominated by the first two levels).
WIDTH_PRESETS: dict[str, NetworkConfig] = {
    "default": NetworkConfig(),
    "light": NetworkConfig(widths=(8, 16, 32, 64), pyramid_channels=32, decoder_widths=(8, 16, 32)),
    "tiny": TINY_NETWORK,
}


@dataclass(frozen=True)
class PhaseConfig:
    """One curriculum phase: its length, peak learning rate and which losses are active.

    ``attributes``: heads trained in this phase (the others' targets are masked out);
    ``segmentation``: whether the decoder is trained (off = not even run); ``data``: another VOI
    folder in the same format to train on (None = the main training split); ``freeze``:
    parameter-name prefixes kept fixed; ``loss_weights``: overrides of :class:`LossWeights`;
    ``malignancy_confident``: ``(low, high)`` keeps only the training nodules whose mean reader
    malignancy is <= low or >= high (unrated ones are dropped); the held-out fold is never
    filtered.
    """

    name: str = "lidc"
    epochs: int = 25
    lr: float = 2e-3
    warmup: float = 0.2
    attributes: tuple[str, ...] = ATTRIBUTES
    segmentation: bool = True
    data: str | None = None
    freeze: tuple[str, ...] = ()
    loss_weights: dict = field(default_factory=dict)
    malignancy_confident: tuple[float, float] | None = None

    def __post_init__(self):
        band = self.malignancy_confident
        if band is not None:
            if len(band) != 2 or not all(np.isfinite(v) for v in band) or band[0] > band[1]:
                raise ValueError(
                    f"phase {self.name}: malignancy_confident must be [low, high] with "
                    f"low <= high, got {list(band)}"
                )

    @classmethod
    def from_dict(cls, d: dict) -> PhaseConfig:
        d = dict(d)
        for key in ("attributes", "freeze"):
            if key in d:
                d[key] = tuple(d[key])
        if d.get("malignancy_confident") is not None:
            d["malignancy_confident"] = tuple(float(v) for v in d["malignancy_confident"])
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown phase settings: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (written to ``config.json``)."""

    voi: VoiConfig = field(default_factory=VoiConfig)
    # The light preset: ~26-30 s/epoch on 2 CPU cores vs ~65-150 s for the default widths.
    network: NetworkConfig = field(default_factory=lambda: WIDTH_PRESETS["light"])
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    phases: tuple[PhaseConfig, ...] = (PhaseConfig(),)
    loss: dict = field(default_factory=dict)
    batch_size: int = 16
    eval_batch_size: int = 32
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    seed: int = 2026
    k: int = 5
    threads: int = 2
    balanced_sampling: bool = False
    canvas_zyx: tuple[int, int, int] = DEFAULT_CANVAS_ZYX
    # Selection: mean val AUROC of the last `select_window` epochs, + dice_w * Dice - mae_w * MAE.
    select_window: int = 3
    select_dice_weight: float = 0.05
    select_mae_weight: float = 0.05
    device: str = "auto"
    # channels-last 3D tensors: ~1.4-1.8x faster convolutions on CPU (oneDNN), same numbers.
    channels_last: bool = True
    # An ensemble folder (manifest.json + fold weights, e.g. models/): fold k starts from its
    # fold-k weights instead of a random initialisation (fine-tuning phases).
    init_from: str | None = None

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["voi"] = self.voi.to_dict()
        d["network"] = self.network.to_dict()
        d["augment"] = self.augment.to_dict()
        d["phases"] = [asdict(p) for p in self.phases]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        if "voi" in d:
            d["voi"] = VoiConfig.from_dict(d["voi"])
        if "network" in d:
            d["network"] = NetworkConfig.from_dict(d["network"])
        if "augment" in d:
            d["augment"] = AugmentConfig.from_dict(d["augment"])
        if "phases" in d:
            d["phases"] = tuple(PhaseConfig.from_dict(p) for p in d["phases"])
        if "canvas_zyx" in d:
            d["canvas_zyx"] = tuple(d["canvas_zyx"])
        unknown = set(d) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        return cls(**d)

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """This configuration's network on ``device`` (channels-last when configured)."""
        model = build_network(self.network).to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        return model

    def with_epochs(self, epochs: int) -> TrainConfig:
        """Same config with the first phase's epochs replaced (the common CLI override)."""
        phases = (replace(self.phases[0], epochs=int(epochs)),) + tuple(self.phases[1:])
        return replace(self, phases=phases)
