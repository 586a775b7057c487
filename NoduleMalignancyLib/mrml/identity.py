"""Which CT a volume node holds: series UID, patient ID and study date, kept on the node.

Why: the CSV and ``result.json`` record the series, patient and study date read (issue 28), but
a CT loaded into the scene lost them: the station and the results table could not say whose CT
they show. The loader (``mrml/ct_loading.py``) stores them as node attributes, so they follow
the node (saved with the scene, read by every surface that has the node); a volume that Slicer's
DICOM module loaded has them in Slicer's DICOM database instead. A file without DICOM headers
(NRRD, NIfTI) has none: every field is then "".
"""

from __future__ import annotations

from collections.abc import Mapping

from ..files.ct_input import IDENTITY_FIELDS, IDENTITY_TAGS
from .roles import ATTRIBUTE_PREFIX

__all__ = ["ATTR_IDENTITY", "set_volume_identity", "volume_identity"]

# One attribute per field: NoduleMalignancy.series_uid, .patient_id, .study_date.
ATTR_IDENTITY = {name: f"{ATTRIBUTE_PREFIX}{name}" for name in IDENTITY_FIELDS}
# Slicer's DICOM module lists a loaded volume's instances in this attribute.
_DICOM_INSTANCES = "DICOM.instanceUIDs"


def set_volume_identity(node, identity: Mapping[str, str]) -> None:
    """Keep ``identity`` (``files/ct_input.input_identity``) on the volume node."""
    for name, attribute in ATTR_IDENTITY.items():
        node.SetAttribute(attribute, str(identity.get(name) or ""))


def volume_identity(node) -> dict[str, str]:
    """``{"series_uid", "patient_id", "study_date"}`` of the CT in ``node`` ("" where unknown):
    from the loader's attributes, else from Slicer's DICOM database."""
    if node is None:
        return dict.fromkeys(IDENTITY_FIELDS, "")
    kept = {name: node.GetAttribute(attribute) for name, attribute in ATTR_IDENTITY.items()}
    if any(value is not None for value in kept.values()):
        return {name: value or "" for name, value in kept.items()}
    return _from_dicom_database(node)


def _from_dicom_database(node) -> dict[str, str]:
    """The identity of a volume Slicer's DICOM module loaded (its first instance's tags)."""
    import slicer

    empty = dict.fromkeys(IDENTITY_FIELDS, "")
    instances = (node.GetAttribute(_DICOM_INSTANCES) or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not instances or database is None:
        return empty
    path = database.fileForInstance(instances[0])
    if not path:
        return empty
    return {
        name: str(database.fileValue(path, tag.replace("|", ",").upper()) or "").strip()
        for tag, name in IDENTITY_TAGS.items()
    }
