"""The repository stays small: what .gitignore ignores is not tracked, except under runs/.

Why: ``runs/`` is ignored, yet run folders were force-added whole, checkpoints included (20 MB
that every clone carries forever). The rule (README, "Contributing"): a run's small result
tables that documents cite may be tracked; its checkpoints only while a multi-session run
needs them to survive between sessions (:data:`RUNS_IN_PROGRESS`), removed from the tree once
that run ships or is abandoned.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Multi-session training runs whose checkpoints are tracked until they ship or are abandoned
# (gate-band-80-pilot was abandoned in the fifteenth session: docs/experiments/README.md).
RUNS_IN_PROGRESS: set[str] = set()
RESULT_TABLES = {".csv", ".json", ".md"}
CHECKPOINTS = {".pt", ".pth", ".ckpt"}


def _tracked_but_ignored() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    run = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return run.stdout.splitlines()


def problems(paths: list[str], in_progress: set[str] = RUNS_IN_PROGRESS) -> list[str]:
    """Every tracked path the rule does not allow, with the reason."""
    found = []
    for path in map(PurePosixPath, paths):
        if path.parts[0] != "runs" or len(path.parts) < 3:
            found.append(f"{path}: ignored by .gitignore yet tracked")
        elif path.suffix in CHECKPOINTS and path.parts[1] not in in_progress:
            found.append(f"{path}: a checkpoint of a run that is not in progress")
        elif path.suffix not in RESULT_TABLES | CHECKPOINTS:
            found.append(f"{path}: only result tables and checkpoints of runs are tracked")
    return found


def test_only_run_tables_and_checkpoints_of_runs_in_progress_are_tracked():
    assert problems(_tracked_but_ignored()) == []


def test_the_rule_catches_a_finished_runs_checkpoint_and_an_ignored_file():
    found = problems(
        [
            "runs/gate-band-80-pilot/fold3/best.pt",
            "runs/gate-band-80-pilot/fold3/oof.csv",
            "runs/old-run/fold0/best.pt",
            "runs/old-run/fold0/dataset.npz",
            "demo_output/x.json",
        ],
        in_progress={"gate-band-80-pilot"},
    )
    assert [f.split(":")[0] for f in found] == [
        "runs/old-run/fold0/best.pt",
        "runs/old-run/fold0/dataset.npz",
        "demo_output/x.json",
    ]
