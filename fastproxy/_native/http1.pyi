"""Typed surface of fastproxy._native.http1 (see http1.pyx and csrc/http1.h)."""
from typing import Final

Buffer = bytes | bytearray | memoryview
Headers = list[tuple[bytes, bytes]]

DEFAULT_MAX_HEAD_BYTES: Final[int]
DEFAULT_MAX_HEADERS: Final[int]
DEFAULT_MAX_LINE_BYTES: Final[int]
MAX_CHUNK_LINE_BYTES: Final[int]

BODY_NONE: Final[int]
BODY_LENGTH: Final[int]
BODY_CHUNKED: Final[int]
BODY_UNTIL_CLOSE: Final[int]
BODY_TUNNEL: Final[int]

class HttpParseError(ValueError):
    status: int
    reason: str
    def __init__(self, status: int, reason: str) -> None: ...

def simd() -> str: ...

class ParsedRequest:
    @property
    def consumed(self) -> int: ...
    @property
    def method(self) -> bytes: ...
    @property
    def target(self) -> bytes: ...
    @property
    def version_minor(self) -> int: ...
    @property
    def headers(self) -> Headers: ...

class ParsedResponse:
    @property
    def consumed(self) -> int: ...
    @property
    def status(self) -> int: ...
    @property
    def reason(self) -> bytes: ...
    @property
    def version_minor(self) -> int: ...
    @property
    def headers(self) -> Headers: ...

def parse_request(buf: Buffer, last_len: int = 0, *, max_head_bytes: int = 0,
                  max_headers: int = 0, max_line_bytes: int = 0) -> ParsedRequest | None: ...
def parse_response(buf: Buffer, last_len: int = 0, *, max_head_bytes: int = 0,
                   max_headers: int = 0, max_line_bytes: int = 0) -> ParsedResponse | None: ...

class RequestParser:
    def __init__(self, *, max_head_bytes: int = 0, max_headers: int = 0,
                 max_line_bytes: int = 0) -> None: ...
    def feed(self, buf: Buffer) -> ParsedRequest | None: ...
    def reset(self) -> None: ...

class ResponseParser:
    def __init__(self, *, max_head_bytes: int = 0, max_headers: int = 0,
                 max_line_bytes: int = 0) -> None: ...
    def feed(self, buf: Buffer) -> ParsedResponse | None: ...
    def reset(self) -> None: ...

class ChunkedDecoder:
    def __init__(self, *, max_head_bytes: int = 0, max_headers: int = 0) -> None: ...
    @property
    def done(self) -> bool: ...
    @property
    def body_bytes(self) -> int: ...
    def feed(self, data: Buffer) -> tuple[int, list[bytes]]: ...

class Framing:
    body: int
    content_length: int
    keep_alive: bool
    conn_close: bool
    conn_keep_alive: bool
    conn_upgrade: bool
    upgrade: bool
    expect_continue: bool
    expect_other: bool
    content_length_index: int
    transfer_encoding_index: int
    host_index: int
    upgrade_index: int
    connection_tokens: list[bytes]
    @property
    def body_name(self) -> str: ...

def request_framing(method: bytes, version_minor: int, headers: Headers) -> Framing: ...
def response_framing(status: int, version_minor: int, headers: Headers,
                     request_method: bytes = b"GET") -> Framing: ...
