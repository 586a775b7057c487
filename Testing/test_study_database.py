"""A study database that is never corrupted and never leaks (issue 28, findings 6-10).

Why these tests: ``study export/analyze`` on an archived (read-only) database crashed on an
audit write after writing the CSVs; a corrupt file gave a raw ``sqlite3.DatabaseError`` and
another application's SQLite file was switched to WAL before it was refused; the database was
created 0644 (truth labels readable by every local user); the owner token existed only on the
command line; a reader named ``$\\frac{$`` crashed the analysis and HTML went live into the
Markdown reports; a failing database left the reading station silent.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from study_files import sequential_study

from NoduleMalignancyLib.core.errors import InputError
from NoduleMalignancyLib.study.store import StudyStore

ROOT = Path(__file__).resolve().parent.parent
CELL_BAR = re.compile(r"(?<!\\)\|")  # a Markdown table's column bar (not an escaped one)
RATING = {"malignancy": 4, "confidence": 70}


def cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "NoduleMalignancyLib.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=None if env is None else {**os.environ, **env},
    )


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` and its files unwritable, even for root (``chattr +i``); restore after."""
    paths = [folder, *folder.iterdir()]
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode:
            pytest.skip("chattr +i is not available here (root ignores file modes)")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", *map(str, paths)], check=True)
        return
    modes = {p: p.stat().st_mode for p in paths}
    for p in paths:
        p.chmod(modes[p] & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        for p in paths:
            p.chmod(modes[p])


def make_study(folder: Path, readers=("alice", "bob"), name="db-test") -> tuple[Path, str, dict]:
    """A six-case sequential study where every reader rated every step (alice's comments are
    spreadsheet formulas)."""
    db, owner, store = sequential_study(folder, 6, name)
    tokens = {r: store.add_reader(owner, r) for r in readers}
    for n, token in enumerate(tokens.values()):
        while (step := store.next_case(token)) is not None:
            store.open_case(token, step.case)
            score = 1 + (n + step.order_index + (step.modality == "aided")) % 5
            comment = '=HYPERLINK("http://evil.example")' if n == 0 else None
            store.submit(
                token, step.case, step.modality, RATING | {"malignancy": score, "comment": comment}
            )
    return db, owner, tokens


def test_export_and_analyze_work_on_a_read_only_archive_and_write_nothing(tmp_path):
    db, owner, _ = make_study(tmp_path / "archive")
    before = db.read_bytes()
    with read_only(db.parent):
        for command in ("export", "analyze"):
            out = tmp_path / command
            done = cli("study", command, "--db", db, "--owner-token", owner, "--out", out)
            assert done.returncode == 0, done.stderr
            assert "Traceback" not in done.stderr
            assert (out / "ratings.csv").is_file() and (out / "scores.csv").is_file()
    assert db.read_bytes() == before, "export and analyze never write to the database"
    assert not Path(f"{db}-wal").exists()


def test_a_corrupt_or_foreign_file_is_refused_before_anything_changes(tmp_path):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"SQLite format 3\x00" + os.urandom(4000))
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    con.execute("INSERT INTO notes (text) VALUES ('another application')")
    con.commit()
    con.close()
    for path in (corrupt, foreign):
        before = path.read_bytes()
        with pytest.raises(InputError, match="is not a study database"):
            StudyStore(path)
        assert path.read_bytes() == before, f"{path.name} was changed before it was refused"
        assert not Path(f"{path}-wal").exists()
        done = cli("study", "export", "--db", path, "--owner-token", "x", "--out", tmp_path / "o")
        assert done.returncode == 2 and "is not a study database" in done.stderr
        assert "Traceback" not in done.stderr
    con = sqlite3.connect(foreign)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "delete", "not switched to WAL"
    con.close()


def test_the_database_is_created_0600(tmp_path):
    db, _, tokens = make_study(tmp_path / "s")
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    con = sqlite3.connect(db)  # while a connection holds it, its WAL files exist: 0600 too
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("SELECT count(*) FROM ratings").fetchone()
    for suffix in ("-wal", "-shm"):
        side = Path(f"{db}{suffix}")
        assert side.exists() and stat.S_IMODE(side.stat().st_mode) == 0o600, suffix
    con.close()


def test_the_owner_token_comes_from_a_file_or_the_environment(tmp_path):
    study_file = tmp_path / "study.json"
    study_file.write_text(
        json.dumps({"design": "sequential", "seed": 1, "cases": [{"id": "c0", "ct": "0.nrrd"}]})
    )
    db, token_file = tmp_path / "study.db", tmp_path / "owner.token"
    done = cli(
        "study", "create", "--study", study_file, "--db", db, "--owner-token-file", token_file
    )
    assert done.returncode == 0, done.stderr
    token = token_file.read_text().strip()
    assert token not in done.stdout, "the token is written to the file, not printed"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    again = cli("study", "create", "--study", study_file, "--db", tmp_path / "b.db",
                "--owner-token-file", token_file)  # fmt: skip
    assert again.returncode == 2 and "never overwritten" in again.stderr
    assert token_file.read_text().strip() == token and not (tmp_path / "b.db").exists()

    from_file = cli("study", "add-reader", "--db", db, "--owner-token-file", token_file,
                    "--name", "alice")  # fmt: skip
    assert from_file.returncode == 0, from_file.stderr
    from_env = cli("study", "add-reader", "--db", db, "--name", "bob",
                   env={"NODULE_MALIGNANCY_OWNER_TOKEN": token})  # fmt: skip
    assert from_env.returncode == 0, from_env.stderr
    missing = cli("study", "add-reader", "--db", db, "--name", "carol",
                  env={"NODULE_MALIGNANCY_OWNER_TOKEN": ""})  # fmt: skip
    assert missing.returncode == 2 and "--owner-token-file" in missing.stderr
    wrong = cli("study", "add-reader", "--db", db, "--name", "dave",
                env={"NODULE_MALIGNANCY_OWNER_TOKEN": "not-the-token"})  # fmt: skip
    assert wrong.returncode == 2 and "owner token" in wrong.stderr
    assert [r["name"] for r in StudyStore(db).readers(token)] == ["alice", "bob"]


def test_names_are_literal_text_in_the_reports_and_plots(tmp_path):
    """A reader named ``$\\frac{$`` (mathtext) and one with HTML and ``|``; a study name too."""
    tricky = ("$\\frac{$", "<img src=x onerror=alert(1)>|x")
    db, owner, _ = make_study(tmp_path / "s", readers=tricky, name="<b>bold</b> | study")
    out = tmp_path / "out"
    done = cli("study", "analyze", "--db", db, "--owner-token", owner, "--out", out)
    assert done.returncode == 0, done.stderr
    assert (out / "reader_rocs.png").stat().st_size > 0
    for report in ("summary.md", "mrmc.md"):
        text = (out / report).read_text()
        assert "<img" not in text and "<b>" not in text, report
        assert "&lt;img src=x onerror=alert(1)&gt;\\|x" in text, report
        header = ""
        for line in text.splitlines():  # every table row keeps its table's column count
            if not line.startswith("|"):
                header = ""
            elif not header:
                header = line
            else:
                assert len(CELL_BAR.findall(line)) == len(CELL_BAR.findall(header)), line
    assert "\\$\\\\frac{\\$" in (out / "summary.md").read_text(), "no $math$ either"


def test_exported_csv_cells_are_formula_safe(tmp_path):
    from NoduleMalignancyLib.files.csv_cells import read_csv

    db, owner, _ = make_study(tmp_path / "s")
    StudyStore(db, read_only=True).export(owner, tmp_path / "out")
    with open(tmp_path / "out" / "ratings.csv", newline="") as f:
        cells = [row["comment"] for row in csv.DictReader(f) if row["comment"]]
    assert cells and all(c.startswith("'=HYPERLINK(") for c in cells), cells[:2]
    rows = read_csv(tmp_path / "out" / "ratings.csv")
    assert rows[0]["comment"] == '=HYPERLINK("http://evil.example")', "read back as written"
