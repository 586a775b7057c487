"""The pages of the ``study serve`` front: sign in, confirm a link's reader, say what went wrong.

Why a confirm page: a reader's link (``/?token=``) used to sign the browser in at once, so any
page or mail could sign a reader's browser in as another reader (login CSRF: the victim's
ratings would be stored as that reader's). A link now only shows "Sign in as <reader>"; the
browser signs in with a POST from this page, which the front accepts only from its own origin.
Every page forbids framing (no click-jacking of the button) and sending its address (it may
hold a token) as a referrer to another site.

Why pages for failures: a reader whose token was revoked, or whose station cannot start, must
read what happened and what to do, not a bare status code (issue 28 finding 7).
"""

from __future__ import annotations

import html

from aiohttp import web

__all__ = ["confirm_page", "message_page", "sign_in_page"]

# No framing, no referrer to other sites, no caching: the pages carry tokens and sign-in buttons.
HEADERS = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    # same-origin: no referrer to other sites; "no-referrer" would make the form's Origin "null".
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Reading study {name}</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:4em auto}}
input{{width:100%;padding:.4em}} .error{{color:#b00020}}</style></head>
<body><h1>Reading study {name}</h1>
"""

_SIGN_IN = """<p class="error" id="sign-in-error">{error}</p>
<form method="post" action="/sign-in">
<label for="token">Reader token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<p><button id="sign-in" type="submit">Sign in</button></p>
</form></body></html>
"""

# The token leaves the address bar at once (it stays in the form only).
_CONFIRM = """<p>This link signs this browser in as reader <strong id="sign-in-reader">{reader}
</strong>. Your ratings will be stored as theirs: sign in only if you are {reader}.</p>
<form method="post" action="/sign-in">
<input type="hidden" name="token" value="{token}">
<p><button id="sign-in-as" type="submit">Sign in as {reader}</button></p>
</form>
<p><a href="/">Not {reader}? Sign in with your own token.</a></p>
<script>history.replaceState(null, "", "/");</script></body></html>
"""

_MESSAGE = """<p class="error" id="front-message">{message}</p>
<p><a id="front-sign-in" href="/">Sign in again</a></p></body></html>
"""


def _response(text: str, status: int) -> web.Response:
    return web.Response(text=text, content_type="text/html", status=status, headers=HEADERS)


def sign_in_page(study: str, error: str = "", status: int = 200) -> web.Response:
    """The token form (``error``: why the last sign-in failed)."""
    text = _HEAD.format(name=html.escape(study)) + _SIGN_IN.format(error=html.escape(error))
    return _response(text, status)


def confirm_page(study: str, reader: str, token: str) -> web.Response:
    """ "Sign in as <reader>": what a reader's link shows; nothing is signed in until the
    button is pressed."""
    body = _CONFIRM.format(reader=html.escape(reader), token=html.escape(token, quote=True))
    return _response(_HEAD.format(name=html.escape(study)) + body, 200)


def message_page(study: str, message: str, status: int) -> web.Response:
    """What went wrong for a signed-in reader (revoked token, station that will not start),
    with the way back to the sign-in page."""
    text = _HEAD.format(name=html.escape(study)) + _MESSAGE.format(message=html.escape(message))
    return _response(text, status)
