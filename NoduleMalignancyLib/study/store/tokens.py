"""The study's credentials: the owner token and one token per reader.

The owner token (made with the study) manages readers and exports; each reader has their own
token and sees and changes only their own ratings. Tokens are 256-bit random strings; only their
SHA-256 is stored (enough for high-entropy tokens, and it lets the store look a reader up by
hash). A wrong token raises ``PermissionError``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from urllib.parse import urlencode

from ...core.errors import AccessDeniedError

DEFAULT_PORT = 8080  # study serve's and the browser station's default (trame's)


def new_token() -> str:
    """A 256-bit URL-safe token that never starts with "-".

    Why: tokens are pasted after ``--owner-token`` on the command line, where argparse reads a
    leading "-" as an option (1 token in 64 would break the command).
    """
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def hash_token(token: str) -> str:
    """SHA-256 hex of a token: what the store keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def reader_link(token: str, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> str:
    """The address that signs a reader in at ``study serve`` (the token is URL-safe already)."""
    return f"http://{host}:{port}/?{urlencode({'token': token})}"


def check_owner(con: sqlite3.Connection, owner_token: str) -> None:
    """Raise ``PermissionError`` unless ``owner_token`` is the study's (constant-time compare)."""
    stored = con.execute("SELECT owner_token_hash FROM study").fetchone()[0]
    if not isinstance(owner_token, str) or not hmac.compare_digest(stored, hash_token(owner_token)):
        raise AccessDeniedError("wrong owner token: reader management and export need it")


def find_reader(con: sqlite3.Connection, token: str) -> sqlite3.Row:
    """The ``readers`` row of this token, or ``PermissionError``."""
    row = None
    if isinstance(token, str) and token:
        row = con.execute(
            "SELECT * FROM readers WHERE token_hash = ?", (hash_token(token),)
        ).fetchone()
    if row is None:
        raise AccessDeniedError("unknown reader token: ask the study owner for your link")
    return row
