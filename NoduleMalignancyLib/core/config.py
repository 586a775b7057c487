"""Configuration records shared by sampling, the network, training and inference."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# The nine LIDC attributes, in the order of the network's attribute heads.
ORDINAL_ATTRIBUTES: tuple[str, ...] = (
    "subtlety",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)
PRESENCE_ATTRIBUTES: tuple[str, ...] = ("calcification", "internal_structure")
ATTRIBUTES: tuple[str, ...] = ORDINAL_ATTRIBUTES + PRESENCE_ATTRIBUTES


@dataclass(frozen=True)
class VoiConfig:
    """The fixed sampling grid around a nodule and how HU become input channels.

    Shapes and spacings are (z, y, x). Windows are (low, high) HU mapped to [0, 1]; one channel
    each, followed by the validity channel (1 where real image data was sampled).
    """

    shape_zyx: tuple[int, int, int] = (32, 48, 48)
    spacing_zyx: tuple[float, float, float] = (1.0, 0.667, 0.667)
    windows: tuple[tuple[float, float], ...] = ((-1000.0, 400.0), (-160.0, 240.0))
    # HU given to samples outside the image (air), also used for LIDC's -2048 outside-FOV value.
    outside_hu: float = -1000.0

    @property
    def n_channels(self) -> int:
        return len(self.windows) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> VoiConfig:
        return cls(
            shape_zyx=tuple(d["shape_zyx"]),
            spacing_zyx=tuple(d["spacing_zyx"]),
            windows=tuple(tuple(w) for w in d["windows"]),
            outside_hu=float(d.get("outside_hu", -1000.0)),
        )


# Canvas around each nodule at the VOI spacing: room for +-2.5 mm shifts, any rotation about z
# and scale 0.8-1.2 of the 32 x 48 x 48 VOI (the LIDC crops rarely extend beyond +-24 mm anyway;
# samples that leave the canvas count as invalid, exactly like samples that leave the crop).
DEFAULT_CANVAS_ZYX: tuple[int, int, int] = (48, 72, 72)


def canvas_config(voi: VoiConfig, canvas_zyx=DEFAULT_CANVAS_ZYX) -> VoiConfig:
    """A VoiConfig for the canvas: same spacing, windows and padding policy, larger grid.

    Canvas and VOI grids are both centred on the nodule, so with an even size difference the VOI
    voxel centres are canvas voxel centres and the centre crop reproduces ``sample_voi`` exactly.
    """
    canvas_zyx = tuple(int(n) for n in canvas_zyx)
    for c, v in zip(canvas_zyx, voi.shape_zyx, strict=True):
        if c < v or (c - v) % 2:
            raise ValueError(f"canvas {canvas_zyx} must exceed the VOI {voi.shape_zyx} evenly")
    return VoiConfig(canvas_zyx, voi.spacing_zyx, voi.windows, voi.outside_hu)


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the multi-scale MIL network (docs/DESIGN.md §3)."""

    in_channels: int = 3
    widths: tuple[int, int, int, int] = (16, 32, 64, 128)
    pyramid_channels: int = 64
    pyramid_layers: int = 2
    n_attributes: int = len(ATTRIBUTES)
    groups: int = 8
    # Encoder convs per level (level 1 is full resolution, where every conv is expensive on CPU).
    convs_per_level: tuple[int, int, int, int] = (1, 1, 2, 2)
    # Decoder widths at levels 1, 2, 3 (level 1 only used with decoder_full_res="conv").
    decoder_widths: tuple[int, int, int] = (8, 16, 32)
    # "skip_logit": upsampled half-res logits + 1x1x1 read-out of level-1 features (cheap);
    # "conv": classic U-Net stage (upsample, concat, 3x3x3 conv) at full resolution.
    decoder_full_res: str = "skip_logit"
    # Conv after each BiFPN fusion: 1 = pointwise, 3 = depthwise-separable 3x3x3.
    pyramid_kernel: int = 1
    # Dropout before the last conv of the gate and instance heads (the seed method: 0.2), to
    # keep the gates from collapsing; 0 builds the heads without a dropout layer (the shipped
    # weights' layout).
    head_dropout: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> NetworkConfig:
        d = dict(d)
        if d.pop("extra", None):  # an unused field of earlier versions, always written empty
            raise ValueError(f"network configuration has an unknown 'extra' section: {d}")
        for key in ("widths", "convs_per_level", "decoder_widths"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


# The smallest network of the same architecture: random test ensembles (self-test, pytest) and
# the "tiny" training preset. Never shipped as "the model".
TINY_NETWORK = NetworkConfig(
    widths=(4, 8, 8, 8),
    pyramid_channels=8,
    pyramid_layers=1,
    groups=2,
    decoder_widths=(4, 4, 8),
)
