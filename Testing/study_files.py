"""A small sequential reading study for the tests that need a database, not CTs."""

from __future__ import annotations

import json
from pathlib import Path

from NoduleMalignancyLib.study.store import StudyStore, create_study


def sequential_study(
    folder: Path, n_cases: int, name: str = "test", clock=None
) -> tuple[Path, str, StudyStore]:
    """(database, owner token, store) of a study requiring malignancy and confidence only; the
    cases' CT paths do not exist (nothing is loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_file = folder / "study.json"
    cases = [{"id": f"c{i}", "ct": f"{i}.nrrd", "truth": i % 2} for i in range(n_cases)]
    study_file.write_text(
        json.dumps(
            {
                "name": name,
                "design": "sequential",
                "seed": 9,
                "required": ["malignancy", "confidence"],
                "cases": cases,
            }
        )
    )
    db = folder / "study.db"
    owner = create_study(db, study_file)
    return db, owner, StudyStore(db, clock=clock) if clock else StudyStore(db)
