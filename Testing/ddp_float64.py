"""``nodule-malignancy`` with the network and its inputs in float64 (a test helper, not a test).

Why: in float32 the gradients of a shard-and-average step and of the full batch differ by
reduction-order rounding (~1e-5 relative), and AdamW turns a near-zero gradient's rounding into
a whole step of either sign; in float64 that noise is gone, so ``Testing/test_ddp.py`` can
require the 2-process run to equal the 1-process run tightly (docs/DESIGN.md §13).
Usage: ``python Testing/ddp_float64.py train ...`` (also under torchrun).
"""

from __future__ import annotations

import sys

from NoduleMalignancyLib import cli
from NoduleMalignancyLib.training.batches import Batcher
from NoduleMalignancyLib.training.config import TrainConfig

_build_model = TrainConfig.build_model
_batch = Batcher.batch


def _build_model_float64(cfg, device):
    return _build_model(cfg, device).double()


def _batch_float64(self, *args, **kwargs):
    b = _batch(self, *args, **kwargs)
    for key in ("x", "seg", "valid"):
        if key in b:
            b[key] = b[key].double()
    return b


if __name__ == "__main__":
    TrainConfig.build_model = _build_model_float64
    Batcher.batch = _batch_float64
    sys.exit(cli.main(sys.argv[1:]))
