"""The K-fold ensemble: manifest with sha256, safe weight loading, batched fold inference.

Weights are only ever read with ``torch.load(..., weights_only=True)`` and only after their
sha256 matches the manifest, so a truncated, corrupt or swapped file is refused with a message
naming it instead of producing silent nonsense.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..atomic import sha256_of, write_json
from ..config import ATTRIBUTES, TINY_NETWORK, NetworkConfig, VoiConfig
from ..device import device_choice, resolve_device
from ..errors import WeightsError
from ..settings import MODELS_ENV, models_dir
from .fusion import check_fusion
from .network import build_network, forward_folds_loop, forward_folds_vmap, stack_folds
from .similar import SimilarIndex, load_similar_index, weights_digest

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
# Digest (:func:`manifest_digest`) of the shipped models/manifest.json, which lists every fold
# file's sha256: only an ensemble whose manifest has this digest reports its own version. A
# shipping commit updates it (Testing/test_shipped_weights.py checks it against models/).
SHIPPED_MANIFEST_SHA256 = "24f15fcaddc36ca3bd04c796be8a0d08b57fa93a3e29832d48274fae6e051933"
# The model version every other ensemble reports (a user's training, a forged manifest).
CUSTOM_VERSION = "custom"


def manifest_digest(directory: Path) -> str:
    """sha256 of the manifest's content as canonical JSON (sorted keys, no spaces), so a
    checkout that rewrites line endings or indentation keeps the shipped digest."""
    content = json.loads((Path(directory) / MANIFEST_NAME).read_text(encoding="utf-8"))
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _check_fold_entries(folds: list) -> None:
    """Every fold entry names its file and that file's sha256 (else a WeightsError, not a
    KeyError when the weights are loaded)."""
    for i, entry in enumerate(folds):
        if not isinstance(entry, dict):
            raise ValueError(f"fold entry {i} is not an object: {entry!r}")
        missing = [k for k in ("file", "sha256") if not isinstance(entry.get(k), str)]
        if missing:
            raise ValueError(f"fold entry {i} ({entry.get('file', '?')}) lacks {missing}")


@dataclass
class Manifest:
    """What ``models/manifest.json`` says about an ensemble."""

    version: str
    voi: VoiConfig
    network: NetworkConfig
    attributes: tuple[str, ...]
    folds: list[dict]  # {"file": ..., "sha256": ...}
    fusion: dict | None = None  # out-of-fold fitted fusion of heads and measurements (fusion.py)
    extra: dict = field(default_factory=dict)
    shipped: bool = False  # the manifest is the shipped one (SHIPPED_MANIFEST_SHA256)

    @property
    def model_version(self) -> str:
        """The version results report: the manifest's own only for the shipped ensemble."""
        return self.version if self.shipped else CUSTOM_VERSION

    @property
    def note(self) -> str:
        """Why the version is ``custom`` (empty for the shipped ensemble)."""
        if self.shipped:
            return ""
        return (
            f"custom weights: the manifest (version {self.version!r}) is not the shipped "
            f"ensemble's, so results report model_version {CUSTOM_VERSION!r}"
        )

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise WeightsError(
                f"No ensemble manifest at {path}. Train one (nodule-malignancy train) or point "
                f"{MODELS_ENV} at a folder with manifest.json and the fold weights."
            )
        try:
            d = json.loads(path.read_text())
            known = {"version", "voi", "network", "attributes", "folds", "fusion"}
            check_fusion(d.get("fusion"))
            _check_fold_entries(list(d["folds"]))
            return cls(
                version=str(d["version"]),
                voi=VoiConfig.from_dict(d["voi"]),
                network=NetworkConfig.from_dict(d["network"]),
                attributes=tuple(d["attributes"]),
                folds=list(d["folds"]),
                fusion=d.get("fusion"),
                extra={k: v for k, v in d.items() if k not in known},
                shipped=manifest_digest(directory) == SHIPPED_MANIFEST_SHA256,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"Ensemble manifest {path} is malformed: {exc}") from exc

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "voi": self.voi.to_dict(),
            "network": self.network.to_dict(),
            "attributes": list(self.attributes),
            "folds": self.folds,
            "fusion": self.fusion,
            **self.extra,
        }


def save_ensemble(
    models: list[torch.nn.Module],
    directory: Path,
    version: str,
    voi: VoiConfig,
    network: NetworkConfig,
    fusion: dict | None = None,
    extra: dict | None = None,
    half: bool = True,
    fold_ids: list[int] | None = None,
) -> Manifest:
    """Write one weights file per fold (fp16 by default) and the manifest with their sha256.

    ``fold_ids`` names each file after the cross-validation fold it was validated on.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    folds = []
    fold_ids = list(fold_ids) if fold_ids is not None else list(range(len(models)))
    for k, model in zip(fold_ids, models, strict=True):
        state = {
            n: (t.detach().half() if half and t.is_floating_point() else t.detach()).cpu()
            for n, t in model.state_dict().items()
        }
        name = f"fold{k}.pt"
        torch.save(state, directory / name)
        folds.append({"file": name, "fold": int(k), "sha256": sha256_of(directory / name)})
    written = {f["file"] for f in folds}
    for stale in directory.glob("fold*.pt"):  # weights of an earlier export, now unlisted
        if stale.name not in written:
            stale.unlink()
    check_fusion(fusion)
    manifest = Manifest(version, voi, network, ATTRIBUTES, folds, fusion, dict(extra or {}))
    write_json(directory / MANIFEST_NAME, manifest.to_dict())
    return manifest


def write_random_ensemble(
    directory: str | Path,
    k: int = 2,
    seed: int = 0,
    fusion: dict | None = None,
    version: str = "test-random",
) -> Manifest:
    """A K-fold randomly initialised :data:`~.config.TINY_NETWORK` ensemble, saved for real.

    Why: the self-test, the MRML plumbing and the CLI are tested without trained weights, in
    seconds and reproducibly, through the same manifest, sha256 and loading path as the shipped
    ensemble.
    """
    torch.manual_seed(seed)
    models = [build_network(TINY_NETWORK) for _ in range(k)]
    for model in models:  # segment the whole field of view: the plumbing always has a nodule
        with torch.no_grad():
            for head in (model.seg_head, getattr(model, "seg_head_half", None)):
                if head is not None:
                    head.bias.fill_(4.0)
    return save_ensemble(models, Path(directory), version, VoiConfig(), TINY_NETWORK, fusion=fusion)


def load_verified_state(path: Path, sha256: str) -> dict:
    """Check a weights file against its manifest checksum, then load it safely."""
    if not path.is_file():
        raise WeightsError(f"Missing weights file {path} (listed in the ensemble manifest).")
    actual = sha256_of(path)
    if actual != sha256:
        raise WeightsError(
            f"Weights file {path} is corrupt or was replaced: sha256 {actual[:12]}... does not "
            f"match the manifest's {sha256[:12]}...."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"Weights file {path} cannot be read: {exc}") from exc


@dataclass
class FoldOutputs:
    """Raw per-fold outputs as numpy, leading dims (K folds, N nodules)."""

    bag_logits: np.ndarray  # (K, N, A)
    seg_probability: np.ndarray  # (K, N, D, H, W)
    contributions: list[np.ndarray]  # per scale (K, N, A, d, h, w)
    gates: list[np.ndarray]  # per scale (K, N, d, h, w)
    bag_features: np.ndarray | None = None  # (K, N, F) gate-pooled features (similar nodules)


class Ensemble:
    """K fold models kept loaded between calls; folds are evaluated on one batch of VOIs."""

    # Up to this many VOIs per call the K folds run as one vmapped call over stacked weights
    # (measured faster for one nodule on 2 CPU cores); larger batches loop over the folds.
    VMAP_MAX_BATCH = 2

    def __init__(
        self,
        manifest: Manifest,
        models: list[torch.nn.Module],
        device="auto",
        similar_index: SimilarIndex | None = None,
    ):
        self.manifest = manifest
        self.models = models
        # The LIDC nodules embedded by these weights (core/model/similar.py); None when not built.
        self.similar_index = similar_index
        # One run at a time: the vmapped call swaps the stacked weights into one shared template
        # module (torch.func.functional_call), so two threads (the station's warm-up and its
        # first click) would see each other's meta placeholders.
        self._run_lock = threading.Lock()
        self.to(str(device))

    @classmethod
    def load(cls, directory=None, device: str = "auto") -> Ensemble:
        directory = models_dir(directory)
        manifest = Manifest.read(directory)
        if tuple(manifest.attributes) != ATTRIBUTES:
            raise WeightsError(
                f"Ensemble in {directory} predicts {manifest.attributes}, expected {ATTRIBUTES}."
            )
        if not manifest.folds:
            raise WeightsError(f"Ensemble manifest in {directory} lists no fold weights.")
        models = []
        for entry in manifest.folds:
            state = load_verified_state(directory / entry["file"], entry["sha256"])
            model = build_network(manifest.network)
            try:
                model.load_state_dict({k: v.float() for k, v in state.items()})
            except RuntimeError as exc:
                raise WeightsError(
                    f"Weights {entry['file']} do not fit the network in the manifest: {exc}"
                ) from exc
            models.append(model)
        if manifest.note:
            log.warning("%s (%s)", manifest.note, directory)
        index = load_similar_index(directory, weights_digest(manifest.folds))
        return cls(manifest, models, device, similar_index=index)

    @property
    def version(self) -> str:
        """The model version results report (``custom`` unless the shipped ensemble)."""
        return self.manifest.model_version

    def to(self, device: str) -> Ensemble:
        """Run on ``device`` (a :func:`~.device.device_choice` name) from now on."""
        self.device_choice = device_choice(device)
        self.fell_back_to_cpu = False
        self._place(resolve_device(device))
        return self

    def use(self, device: str) -> Ensemble:
        """Like :meth:`to`, but a choice already in force is kept as it is.

        Why: after a GPU out-of-memory fallback the ensemble stays on the CPU for the same
        choice (``auto``); moving it back on every call would pay the failure on every click.
        """
        if device_choice(device) != self.device_choice:
            self.to(device)
        return self

    def _place(self, device: torch.device) -> None:
        self.device = device
        for m in self.models:
            m.eval().to(device)
        self._stack = stack_folds(self.models) if len(self.models) > 1 else None

    @torch.inference_mode()
    def _run(self, x: torch.Tensor) -> FoldOutputs:
        x = x.to(self.device)
        use_amp = self.device.type == "cuda"
        with torch.autocast(self.device.type, enabled=use_amp, dtype=torch.float16):
            if self._stack is not None and x.shape[0] <= self.VMAP_MAX_BATCH:
                out = forward_folds_vmap(self._stack, x)
            else:
                out = forward_folds_loop(self.models, x)

        def numpy(t: torch.Tensor) -> np.ndarray:
            return t.float().cpu().numpy()

        return FoldOutputs(
            bag_logits=numpy(out["bag_logits"]),
            seg_probability=numpy(torch.sigmoid(out["seg_logits"][:, :, 0].float())),
            contributions=[numpy(c) for c in out["contributions"]],
            gates=[numpy(g[:, :, 0]) for g in out["gates"]],
            bag_features=numpy(out["bag_features"]),
        )

    def warm_up(self) -> None:
        """One pass on an empty VOI, so that the first click does not pay torch's first-call
        set-up (kernel selection, allocations: about 0.1 s on the CPU, more on a GPU)."""
        shape = (1, self.manifest.network.in_channels, *self.manifest.voi.shape_zyx)
        self.run(np.zeros(shape, dtype=np.float32))

    def run(self, channels: np.ndarray) -> FoldOutputs:
        """Run all folds on VOI channels (N, C, D, H, W); CUDA out-of-memory falls back to CPU."""
        x = torch.as_tensor(np.ascontiguousarray(channels), dtype=torch.float32)
        with self._run_lock:
            return self._run_or_fall_back(x)

    def _run_or_fall_back(self, x: torch.Tensor) -> FoldOutputs:
        try:
            return self._run(x)
        except torch.cuda.OutOfMemoryError:
            warnings.warn(
                "GPU out of memory while analyzing; falling back to CPU for this ensemble "
                "(choose the device again to retry the GPU).",
                RuntimeWarning,
                stacklevel=2,
            )
            torch.cuda.empty_cache()
            self._place(torch.device("cpu"))
            self.fell_back_to_cpu = True
            return self._run(x)
