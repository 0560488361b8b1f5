"""Typed surface of fastproxy._native.h1proxy (see h1proxy.pyx and csrc/h1proxy.h)."""
from typing import Any, Protocol

DETACH_HTTP2: int
DETACH_TLS: int
DETACH_OPAQUE: int
DETACH_TIMEOUT: int
DETACH_TUNNEL: int
FLAG_UF: int
FLAG_UT: int
FLAG_UC: int
FLAG_NR: int
FLAG_DC: int
FLAG_DPE: int
FLAG_UPE: int
FLAG_UO: int
FLAG_UH: int
FLAG_RL: int
FLAG_FI: int
FLAG_DI: int
FLAG_URX: int
FLAG_SI: int
SERIES_SLOTS: int          # 48 slots per series
G_SERIES_OVERFLOW: int     # 4
G_RECORDS_DROPPED: int     # 5
RECORD_FIELDS: tuple[str, ...]

# (start_time_us, duration_us, upstream_service_time_us, method, path, protocol, status, flags,
#  bytes_received, bytes_sent, upstream_host, cluster_block, listener_block, x_request_id,
#  authority, user_agent, downstream_peer, original_dst, trace_id, span_id, parent_span_id,
#  sampled, route_name)
Record = tuple[int, int, int, bytes, bytes, bytes, int, int, int, int, bytes, int, int, bytes,
               bytes, bytes, bytes, bytes, bytes, bytes, bytes, bool, bytes]

def series_key_http(listener_block: int, cluster_block: int, flags: int, status: int) -> int: ...
def series_key_tcp(listener_block: int, cluster_block: int) -> int: ...

class Decision: ...

class Target(Decision):
    cluster: Any
    route: Any
    def __init__(self, ip: str, port: int, src_ip: str | None, cluster_block: int, connect_timeout_ms: int,
                 timeout_ms: int = 0, req_ops: Any = None, resp_ops: Any = None, name: bytes = b"", *,
                 gcl: int = 0, gcfg: Any = None, gep: int = 0, ep_slot: int = 0, retry: Any = None,
                 idle_timeout_ms: int = 0, delay_ms: int = 0, cluster: Any = None, route: Any = None,
                 limits: tuple[tuple[int, int, int, int], ...] = ()) -> None: ...

class Reply(Decision):
    def __init__(self, status: int, reason: bytes, headers: bytes = b"", body: bytes = b"",
                 flags: int = 0, name: bytes = b"", delay_ms: int = 0,
                 limits: tuple[tuple[int, int, int, int], ...] = ()) -> None: ...

class Conn:
    listener: Any
    dst: tuple[str, int] | None
    cache: Decision | None
    peer: str | None
    def __init__(self, listener: Any, dst: tuple[str, int] | None, peer: str | None = None) -> None: ...

class Headers:
    def get(self, name: bytes, default: Any = None) -> bytes | Any: ...

class Owner(Protocol):
    def decide(self, conn: Conn, method: bytes, target: bytes, authority: bytes,
               headers: Headers) -> Decision: ...
    def http_closed(self, conn: Conn, requests: int) -> None: ...
    # a retry: another endpoint for the request decided by `target`, avoiding the tried slots (None: no retry)
    def retry(self, conn: Conn, target: Target, tried: tuple[int, ...]) -> Target | None: ...
    def http_detached(self, conn: Conn, kind: int, fd: int, upstream_fd: int, cluster_block: int) -> None: ...
    # only with records=True: the records drained at the end of a run (never empty)
    def http_records(self, records: list[Record]) -> None: ...

class HttpEngine:
    errors: int
    last_error: BaseException | None
    @property
    def records(self) -> bool: ...
    def __init__(self, loop: Any, owner: Owner, counters: int, counters_len: int, *, max_head_bytes: int,
                 max_headers: int, max_line_bytes: int, buffer_bytes: int, pool_max_idle: int,
                 pool_idle_ms: int, client_idle_ms: int, series_base: int = 0, series_max: int = 0,
                 records: bool = False, records_cap: int = 4096, tracing: bool = False,
                 trace_sampling: float = 1.0, gv_base: int = 0, gv_ledger: int = 0) -> None: ...
    def add(self, fd: int, conn: Conn, *, detect: bool, detect_ms: int, listener_block: int, peer: bytes,
            proto: bytes, default_host: bytes, request_id: bool, peer_addr: bytes = b"",
            original_dst: bytes | None = None, headers_timeout_ms: int = 0) -> None: ...
    def series_slot(self, key: int) -> int: ...
    def drain_records(self) -> list[Record]: ...
    def run(self) -> None: ...
    def expire(self) -> None: ...
    def drain(self) -> None: ...
    @property
    def count(self) -> int: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...
