"""Typed surface of fastproxy._native.detect (see detect.pyx and csrc/detect.h)."""
from typing import Final

Buffer = bytes | bytearray | memoryview

CODE_NEED_MORE: Final[int]
CODE_HTTP1: Final[int]
CODE_HTTP2: Final[int]
CODE_TLS: Final[int]
CODE_OPAQUE: Final[int]
MAX_DETECT_BYTES: Final[int]

def detect(data: Buffer) -> str: ...
def detect_code(data: Buffer) -> int: ...
