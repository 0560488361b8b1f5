"""Sans-IO protocol pieces: bytes in, decisions out; no sockets (see DESIGN.md).

detect.py: which protocol a connection speaks, from its first bytes.

The public names of the modules are re-exported here, except that the
function detect.detect is exported as `detect_protocol`: the name `detect`
stays the module (a function of the same name would shadow it).
"""
from .detect import (
    DEFAULT_OPAQUE_PORTS,
    H2_PREFACE,
    HTTP1,
    HTTP2,
    MAX_CLIENT_HELLO_BYTES,
    MAX_DETECT_BYTES,
    NEED_MORE,
    OPAQUE,
    TLS,
    ClientHello,
    ClientHelloError,
    parse_client_hello,
    skips_detection,
)
from .detect import detect as detect_protocol

__all__ = [
    "DEFAULT_OPAQUE_PORTS", "H2_PREFACE", "HTTP1", "HTTP2", "MAX_CLIENT_HELLO_BYTES",
    "MAX_DETECT_BYTES", "NEED_MORE", "OPAQUE", "TLS", "ClientHello", "ClientHelloError",
    "detect_protocol", "parse_client_hello", "skips_detection",
]
