"""A raw wslink client for the attack tests: what any local process or page could send.

Speaks wslink's framing (a 12-byte chunk header, then msgpack) without trame's JavaScript, so a
test can try a wrong Origin, the default secret, ``trame.state.get`` and triggers directly.
"""

from __future__ import annotations

import asyncio
import secrets

import aiohttp
import msgpack

DEFAULT_SECRET = "wslink-secret"


def _frame(message: dict) -> bytes:
    body = msgpack.packb(message)
    header = (
        int.from_bytes(secrets.token_bytes(4), "little").to_bytes(4, "little")
        + (0).to_bytes(4, "little")
        + len(body).to_bytes(4, "little")
    )
    return header + body


def _unframe(data: bytes) -> dict:
    return msgpack.unpackb(data[12:], raw=False, strict_map_key=False)


class RefusedError(Exception):
    """The server refused the websocket upgrade (HTTP status in ``status``)."""

    def __init__(self, status: int):
        super().__init__(f"websocket upgrade refused: HTTP {status}")
        self.status = status


async def _session(url, origin, cookies, secret, calls):
    headers = {"Origin": origin} if origin else {}
    async with aiohttp.ClientSession(cookies=cookies or {}) as client:
        try:
            ws = await client.ws_connect(url, headers=headers, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            raise RefusedError(exc.status) from None
        async with ws:
            replies = []
            messages = [("system:c0:0", "wslink.hello", [{"secret": secret}])]
            messages += [(f"rpc:c0:{i + 1}", m, a) for i, (m, a) in enumerate(calls)]
            for rpc_id, method, args in messages:
                await ws.send_bytes(
                    _frame({"wslink": "1.0", "id": rpc_id, "method": method, "args": args})
                )
                while True:  # skip publications (state pushes) until this call's answer
                    message = await asyncio.wait_for(ws.receive(), 60)
                    if message.type != aiohttp.WSMsgType.BINARY:
                        replies.append({"closed": True})
                        return replies
                    reply = _unframe(message.data)
                    if reply.get("id") == rpc_id:
                        replies.append(reply)
                        break
            return replies


def call(url: str, origin: str | None, secret: str, calls, cookies=None) -> list[dict]:
    """Connect, say hello with ``secret``, make ``calls`` ([(method, args)]); the replies, the
    hello's first. Raises :class:`RefusedError` when the upgrade itself is refused."""
    return asyncio.run(_session(url, origin, cookies, secret, list(calls)))


def refused(reply: dict) -> bool:
    """Whether a reply is wslink's error (authentication or other), not a result."""
    return "error" in reply and "result" not in reply
