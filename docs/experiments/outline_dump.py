"""Every click of the scope checks' sets with its outline, for fitting a check offline.

    NODULE_MALIGNANCY_DATA=../shared/data python docs/experiments/outline_dump.py outlines.pkl

The clicks, in this order: negative_clicks.py's 95 negative clicks (seed 2026), the 5 reader
nodules of the two development CTs, vessel_clicks.py's 80 vessel clicks and its 409 inserted
LIDC nodules (seed 7; in a random order, so that a partial run holds a random subset), each analyzed as in the product (``analyze_point``). Saved per click (a list of
dicts, pickled): the set, the CT, the point (LPS), the insertion's record name (inserted
nodules: the image is rebuilt with ``vessel_clicks.insert``), the outline (VOI-grid mask and the
VOI geometry), the scope figures, the warning codes, the tier, the diameter; or the refusal code.
The file is rewritten every 20 clicks. About 10 min on a quiet core (1 s a
click), over an hour under load. Read by vessel_axis.py (docs/experiments/README.md, "Scope").
"""

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import negative_clicks
import vessel_clicks

from NoduleMalignancyLib.core.model.ensemble import Ensemble
from NoduleMalignancyLib.core.nodule.analysis import analyze_point
from NoduleMalignancyLib.core.scope.validation import RefusedError
from NoduleMalignancyLib.files.samples import nodule_points_lps


def main(path: str) -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    ens = Ensemble.load(device="cpu")
    hosts, vrows = vessel_clicks.clicks()
    todo = []
    rng = np.random.default_rng(2026)
    for name in vessel_clicks.CTS:
        img, a, g, _, _ = hosts[name]
        for source, kind, ijk in negative_clicks.clicks(name, a, g, rng):
            label = f"{source}: {kind} @ {' '.join(map(str, ijk))}"
            todo.append(("negative click", name, label, g.index_to_lps(np.array(ijk, float)), None))
        for label, p in nodule_points_lps(name):
            todo.append(("reader nodule", name, label, np.asarray(p, float), None))
    vessels = [r for r in vrows if r["kind"] == "vessel click"]
    nodules = [r for r in vrows if r["kind"] != "vessel click"]
    # The nodules in a random order (seed 7), so that a run stopped early holds a random subset.
    nodules = [nodules[i] for i in np.random.default_rng(7).permutation(len(nodules))]
    for r in vessels + nodules:
        todo.append((r["kind"], r["ct"], r["name"], r["point"], r.get("record")))
    out = []
    for n, (kind, name, label, point, record) in enumerate(todo):
        img, a, g, _, _ = hosts[name]
        image = vessel_clicks.insert(img, a, record, point) if record is not None else a
        row = {"set": kind, "ct": name, "label": label, "point": np.asarray(point, float)}
        try:
            r = analyze_point(image, g, point, ens, map_to_ct=False)
            row |= {
                "mask": np.packbits(r.segmentation_mask_voi),
                "mask_shape": r.segmentation_mask_voi.shape,
                "voi": r.voi_geometry.to_dict(),
                "figures": dict(r.scope_figures),
                "codes": [w.code for w in r.warnings],
                "tier": r.assessment.tier,
                "diameter_mm": r.diameter_mm,
            }
        except RefusedError as e:
            row |= {"tier": "refused", "codes": [e.code]}
        out.append(row)
        print(n, kind, name, label, row["tier"], row["codes"], flush=True)
        if n % 20 == 19 or n == len(todo) - 1:  # written as it goes: a partial run is usable
            with open(path + ".tmp", "wb") as f:
                pickle.dump(out, f)
            os.replace(path + ".tmp", path)


if __name__ == "__main__":
    main(sys.argv[1])
