"""Typed surface of fastproxy._native.rewrite (see rewrite.pyx and csrc/rewrite.h)."""
from collections.abc import Iterable, Mapping
from typing import Final

Buffer = bytes | bytearray | memoryview
Text = str | bytes
Pairs = Mapping[Text, Text] | Iterable[tuple[Text, Text]]

CONN_NONE: Final[int]
CONN_CLOSE: Final[int]
CONN_KEEP_ALIVE: Final[int]
CONN_UPGRADE: Final[int]
MAX_SET: Final[int]

class RewriteOps:
    def __init__(self, set: Pairs = (), add: Pairs = (), remove: Iterable[Text] = (), *,
                 path: Text | None = None, path_prefix_len: int | None = None,
                 authority: Text | None = None) -> None: ...
    @property
    def set(self) -> tuple[tuple[bytes, bytes], ...]: ...
    @property
    def add(self) -> tuple[tuple[bytes, bytes], ...]: ...
    @property
    def remove(self) -> tuple[bytes, ...]: ...
    @property
    def address(self) -> int: ...   # the compiled rw_ops, for the C data path
    @property
    def path(self) -> bytes | None: ...
    @property
    def path_prefix_len(self) -> int | None: ...
    @property
    def authority(self) -> bytes | None: ...

def rewrite_request(head: Buffer, ops: RewriteOps | None = None, *, peer: Text = b"",
                    proto: Text = b"", request_id: bytes | None = None,
                    connection: int = ..., drop_transfer_encoding: bool = False,
                    default_host: Text = b"", extra: Text = b"",
                    version_minor: int = 1) -> bytes: ...
def rewrite_response(head: Buffer, ops: RewriteOps | None = None, *,
                     request_method: Text = b"GET", connection: int = ...,
                     drop_transfer_encoding: bool = False, extra: Text = b"",
                     version_minor: int = 1) -> bytes: ...
def uuid4(random_bytes: bytes) -> str: ...
