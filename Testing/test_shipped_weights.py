"""Shipped weights are the shipped weights (issue 28 finding 11, finding 8's fold entry).

The shipped manifest's digest is fixed in the package; weights whose manifest differs (zeroed
weights with a recomputed manifest, a user's own training) load and run but report
``model_version`` ``custom``; a manifest fold entry without ``sha256`` is a WeightsError.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from NoduleMalignancyLib.core.errors import NoduleMalignancyError
from NoduleMalignancyLib.core.model.ensemble import (
    CUSTOM_VERSION,
    SHIPPED_MANIFEST_SHA256,
    Ensemble,
    Manifest,
    WeightsError,
    manifest_digest,
    sha256_of,
)
from NoduleMalignancyLib.core.settings import shipped_models_dir


def test_the_package_pins_the_shipped_manifest():
    assert manifest_digest(shipped_models_dir()) == SHIPPED_MANIFEST_SHA256
    assert (
        Manifest.read(shipped_models_dir()).model_version
        == Manifest.read(shipped_models_dir()).version
        != CUSTOM_VERSION
    )


def test_zeroed_weights_with_a_recomputed_manifest_are_custom(tmp_path):
    folder = tmp_path / "forged"
    shutil.copytree(shipped_models_dir(), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["folds"]:
        state = torch.load(folder / entry["file"], map_location="cpu", weights_only=True)
        torch.save({k: torch.zeros_like(v) for k, v in state.items()}, folder / entry["file"])
        entry["sha256"] = sha256_of(folder / entry["file"])
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    loaded = Manifest.read(folder)
    assert loaded.version.startswith("lidc-mil-")  # what the forged manifest claims
    assert loaded.model_version == CUSTOM_VERSION
    assert "not the shipped ensemble" in loaded.note
    ensemble = Ensemble.load(folder, device="cpu")
    assert ensemble.version == CUSTOM_VERSION


def test_other_weights_keep_working_labelled_custom(tiny_dir):
    ensemble = Ensemble.load(tiny_dir, device="cpu")
    assert ensemble.version == CUSTOM_VERSION and len(ensemble.models) == 2
    assert "test-random" in ensemble.manifest.note


def test_a_fold_entry_without_sha256_is_a_weights_error(tiny_dir, tmp_path):
    folder = tmp_path / "nosha"
    shutil.copytree(tiny_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["folds"][1]["sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="fold entry 1 .*sha256") as info:
        Ensemble.load(folder, device="cpu")
    assert isinstance(info.value, NoduleMalignancyError)
