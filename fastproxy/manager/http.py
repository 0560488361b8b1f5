"""A small HTTP/1.1 server for the admin and metrics ports (never on the data path).

One request per connection (Connection: close), bounded head and body sizes.
Handlers are async callables (method, path, query, body, headers) -> Response.
fetch() is the one client: the merged metrics port scrapes the app with it.
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


# (method, path, query, body, headers): header names lowercased, the last value of a repeated one kept.
Handler = Callable[[str, str, dict, bytes, dict], Awaitable[Response]]


async def _read_request(reader: asyncio.StreamReader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None, Response(400, "malformed request line\n")
    method, target, _ = parts
    length = 0
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
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
    return (method, url.path, parse_qs(url.query), body, headers), None


async def serve(host: str, port: int, handler: Handler) -> asyncio.AbstractServer:
    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                req, err = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                req, err = None, Response(431, "request head too large\n")
            except TimeoutError:
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


MAX_FETCH = 64 * 1024 * 1024


async def fetch(host: str, port: int, path: str, headers: dict[str, str], timeout: float) -> tuple[int, dict, bytes]:
    """GET http://host:port/path with Connection: close: (status, lowercased headers, body).
    Raises OSError (incl. timeouts) or ValueError for a response it cannot read."""
    async def _get():
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEAD)
        try:
            head = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close", "User-Agent: fastproxy"]
            head += [f"{k}: {v}" for k, v in headers.items()]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            await writer.drain()
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ValueError(f"not an HTTP/1 response: {lines[0][:80]!r}")
            got = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    got[name.strip().lower()] = value.strip()
            if "chunked" in got.get("transfer-encoding", "").lower():
                body = await _read_chunked(reader)
            elif "content-length" in got:
                n = int(got["content-length"])
                if n > MAX_FETCH:
                    raise ValueError(f"response body over {MAX_FETCH} bytes")
                body = await reader.readexactly(n)
            else:
                body = await reader.read(MAX_FETCH + 1)
                if len(body) > MAX_FETCH:
                    raise ValueError(f"response body over {MAX_FETCH} bytes")
            return int(parts[1]), got, body
        finally:
            writer.close()

    try:
        return await asyncio.wait_for(_get(), timeout)
    except TimeoutError:
        raise TimeoutError(f"no response from {host}:{port} within {timeout}s") from None
    except asyncio.IncompleteReadError as e:
        raise ConnectionError(f"{host}:{port} closed mid-response") from e
    except asyncio.LimitOverrunError as e:
        raise ValueError("response head too large") from e


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":   # trailer fields
                pass
            return bytes(out)
        if len(out) + size > MAX_FETCH:
            raise ValueError(f"response body over {MAX_FETCH} bytes")
        out += await reader.readexactly(size)
        await reader.readexactly(2)
