"""Write ``Resources/Screenshots/overlay.png`` for the README (run by hand, not by the tests).

    NODULE_MALIGNANCY_DATA=../shared/data .venv/bin/python Testing/make_screenshot.py

Loads LIDC-IDRI-0001, places the point on the readers' nodule, analyses it with the shipped
ensemble (``models/``; falls back to the tiny random test ensemble, and says so in the image,
when there is none) and renders axial, coronal and sagittal slice views offscreen with the
segmentation outline and the combined evidence overlay (Slicer's own 2D pipeline, see
``test_rendering.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from test_rendering import OffscreenSliceView, offscreen_backend  # noqa: E402

DEFAULT_OUT = HERE.parent / "Resources" / "Screenshots" / "overlay.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    parser.add_argument("--size", type=int, default=420, help="pixels per view")
    parser.add_argument("--fov", type=float, default=70.0, help="field of view in mm")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from NoduleMalignancyLib.core.geometry import lps_to_ras
    from NoduleMalignancyLib.files import samples
    from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic
    from NoduleMalignancyLib.mrml.runtime import ensure_slicer_runtime, reset_scene
    from NoduleMalignancyLib.mrml.selftest import SAMPLE, random_test_ensemble, trained_ensemble

    backend = offscreen_backend()
    if backend is None:
        print("error: no offscreen OpenGL (EGL or OSMesa) renders here", file=sys.stderr)
        return 1
    slicer = ensure_slicer_runtime()
    scene = reset_scene()
    ensemble, reason = trained_ensemble()
    note = ""
    if ensemble is None:
        print(f"warning: {reason}; using the tiny random test ensemble", file=sys.stderr)
        ensemble, note = random_test_ensemble(), "  [random test weights: not a trained model]"
    views = [
        OffscreenSliceView(scene, slicer.app.applicationLogic(), name, args.size)
        for name in ("Red", "Yellow", "Green")
    ]
    try:
        for view, orientation in zip(views, ("Axial", "Coronal", "Sagittal"), strict=True):
            view.slice_node.SetOrientation(orientation)
        volume = slicer.util.loadVolume(str(samples.sample_path(SAMPLE)))
        name, point_lps = samples.nodule_points_lps(SAMPLE)[0]
        point_ras = lps_to_ras(point_lps)
        markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Nodules")
        markups.AddControlPoint(*point_ras, name)
        markups.GetDisplayNode().SetPointLabelsVisibility(False)
        markups.GetDisplayNode().SetGlyphScale(1.5)
        logic = NoduleMalignancyLogic(ensemble=ensemble)
        output = logic.analyze(volume, markups)
        result = output.results[0]
        images = []
        for view in views:
            view.look_at(point_ras, args.fov)
            images.append(view.render()[::-1])
    finally:
        for view in views:
            view.close()
    title = (
        f"{SAMPLE}, {name}: malignancy {100 * result.malignancy_probability:.0f} % "
        f"(fold SD {100 * result.malignancy_sd:.0f}), diameter {result.diameter_mm:.1f} mm, "
        f"model {result.model_version}{note}"
    )
    fig, axes = plt.subplots(1, 3, figsize=(3 * args.size / 100, args.size / 100 + 0.5), dpi=100)
    for ax, image, label in zip(axes, images, ("axial", "coronal", "sagittal"), strict=True):
        ax.imshow(image)
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(
        title + "\nyellow outline: segmentation; red/blue: evidence for/against malignancy",
        fontsize=8,
    )
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    reset_scene()
    print(f"wrote {out} ({backend}); {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
