"""The SQLite store of a reading study: readers, case orders and every rating (docs/DESIGN.md §14).

Cut at its seams: ``schema.py`` (tables, schema version, migrations, connections),
``tokens.py`` (owner and reader credentials), ``workflow.py`` (the rules of what a reader is due
and when), ``export.py`` (the owner's tables and CSV files) and ``study_store.py`` (the
operations: ``create_study`` and :class:`StudyStore`). Callers import from here.
"""

from .export import RATING_COLUMNS, SCORE_COLUMNS, SCORES, SKIP_COLUMNS, Snapshot
from .schema import SCHEMA_VERSION
from .study_store import MAX_REASON, READER_NAME, StudyStore, create_study
from .tokens import DEFAULT_PORT, hash_token, new_token, reader_link
from .workflow import Assignment, Progress, StudyStateError, WashoutError

__all__ = [
    "DEFAULT_PORT",
    "MAX_REASON",
    "RATING_COLUMNS",
    "READER_NAME",
    "SCHEMA_VERSION",
    "SCORES",
    "SCORE_COLUMNS",
    "SKIP_COLUMNS",
    "Assignment",
    "Progress",
    "Snapshot",
    "StudyStateError",
    "StudyStore",
    "WashoutError",
    "create_study",
    "hash_token",
    "new_token",
    "reader_link",
]
