"""A small HTTP/1.1 server for the admin and metrics ports (never on the data path).

One request per connection (Connection: close), bounded head and body sizes.
Handlers are async callables (method, path, query, body) -> Response.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("fastproxy.manager")

MAX_HEAD = 16384
MAX_BODY = 16 * 1024 * 1024
READ_TIMEOUT_S = 10.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 413: "Payload Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Response:
    status: int
    body: bytes | str
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self) -> bytes:
        body = self.body.encode() if isinstance(self.body, str) else self.body
        head = [f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
                f"Content-Type: {self.content_type}", f"Content-Length: {len(body)}", "Connection: close"]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


Handler = Callable[[str, str, dict, bytes], Awaitable[Response]]


async def _read_request(reader: asyncio.StreamReader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None, Response(400, "malformed request line\n")
    method, target, _ = parts
    length = 0
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() == "content-length":
            if not value.strip().isdigit():
                return None, Response(400, "bad Content-Length\n")
            length = int(value.strip())
        elif sep and name.strip().lower() == "transfer-encoding":
            return None, Response(400, "chunked bodies are not accepted here; send Content-Length\n")
    if length > MAX_BODY:
        return None, Response(413, f"body over {MAX_BODY} bytes\n")
    body = await reader.readexactly(length) if length else b""
    url = urlsplit(target)
    return (method, url.path, parse_qs(url.query), body), None


async def serve(host: str, port: int, handler: Handler) -> asyncio.AbstractServer:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                req, err = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                req, err = None, Response(431, "request head too large\n")
            except asyncio.TimeoutError:
                req, err = None, Response(408, "request not received in time\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if req is not None:
                try:
                    err = await handler(*req)
                except Exception as e:  # an admin bug must not take the manager down
                    log.exception("admin handler failed")
                    err = Response(500, f"internal error: {e}\n")
            writer.write(err.encode())
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_server(on_client, host, port, limit=MAX_HEAD, reuse_address=True)
