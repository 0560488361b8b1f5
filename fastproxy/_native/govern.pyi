"""Typed surface of fastproxy._native.govern (see govern.pyx and csrc/govern.h)."""
from types import TracebackType
from typing import TypedDict, final

UNLIMITED: int               # GV_UNLIMITED, 2**32 - 1: no breaker threshold
MAX_RETRIABLE_CODES: int     # 8

class _ClusterStats(TypedDict):  # stub-only: every gv_cluster field
    version: int
    cx_active: int
    rq_pending: int
    rq_active: int
    rq_retry_active: int
    ejected: int
    cx_overflow: int
    rq_pending_overflow: int
    rq_overflow: int
    rq_retry_overflow: int
    rq_retry: int
    rq_retry_success: int
    ejections_total: int
    ejections_5xx: int
    ejections_gateway: int
    ejections_overflow: int

class _EndpointStats(TypedDict):  # stub-only: every gv_endpoint field
    rq_active: int
    rq_total: int
    cons_5xx: int
    cons_gw: int
    ejected: int             # 0 or 1
    ejections: int           # the ejection-time multiplier
    eject_until_ms: int      # CLOCK_MONOTONIC ms: when the (last) ejection may end
    hc_failed: int           # 0 or 1

class _BucketStats(TypedDict):  # stub-only
    tokens: int | None       # left after the last take; None: never used (full)
    allowed: int
    limited: int

@final
class ClusterCfg:
    """One gv_cluster_cfg by value (immutable). Every count is 0..2**32-1;
    budget_percent is rounded half up to a whole percent (0: no budget)."""
    def __init__(self, *, max_connections: int, max_pending_requests: int, max_requests: int,
                 max_retries: int, budget_percent: float, min_retry_concurrency: int,
                 od_enabled: bool, consecutive_5xx: int, consecutive_gateway_failure: int,
                 base_ejection_ms: int, max_ejection_ms: int, max_ejection_percent: int,
                 nhosts: int) -> None: ...
    @property
    def address(self) -> int:
        """Address of the struct for C; valid while this object lives."""
    @property
    def max_connections(self) -> int: ...
    @property
    def max_pending_requests(self) -> int: ...
    @property
    def max_requests(self) -> int: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def budget_percent(self) -> int: ...
    @property
    def min_retry_concurrency(self) -> int: ...
    @property
    def od_enabled(self) -> bool: ...
    @property
    def consecutive_5xx(self) -> int: ...
    @property
    def consecutive_gateway_failure(self) -> int: ...
    @property
    def base_ejection_ms(self) -> int: ...
    @property
    def max_ejection_ms(self) -> int: ...
    @property
    def max_ejection_percent(self) -> int: ...
    @property
    def nhosts(self) -> int: ...

@final
class RetryCfg:
    """One gv_retry by value (immutable). retry_on: GV_RETRY_* bits
    (fastproxy.policy.retry RETRY_*); at most MAX_RETRIABLE_CODES codes."""
    def __init__(self, *, num_retries: int, retry_on: int, per_try_timeout_ms: int,
                 codes: tuple[int, ...] = (), non_idempotent: bool = False,
                 backoff_base_ms: int = 25, backoff_max_ms: int = 250) -> None: ...
    @property
    def address(self) -> int:
        """Address of the struct for C; valid while this object lives."""
    @property
    def num_retries(self) -> int: ...
    @property
    def retry_on(self) -> int: ...
    @property
    def per_try_timeout_ms(self) -> int: ...
    @property
    def codes(self) -> tuple[int, ...]: ...
    @property
    def non_idempotent(self) -> bool: ...
    @property
    def backoff_base_ms(self) -> int: ...
    @property
    def backoff_max_ms(self) -> int: ...

@final
class GovernSegment:
    """create=True creates (O_EXCL) and initialises; otherwise attaches and
    checks the header (nonzero counts must match it). Raises ShmError
    (fastproxy._native.shm) when the system or the segment refuses."""
    @property
    def name(self) -> str: ...
    def __init__(self, name: str, *, create: bool = False, ncluster: int = 0, nendpoint: int = 0,
                 nbucket: int = 0) -> None: ...
    @property
    def ncluster(self) -> int: ...
    @property
    def nendpoint(self) -> int: ...
    @property
    def nbucket(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def address(self) -> int:
        """The segment's base address, for the HTTP engine; valid until close()."""
    def cluster_address(self, slot: int) -> int:
        """0 when the slot is out of range."""
    def endpoint_address(self, slot: int) -> int:
        """0 when the slot is out of range."""
    def bucket_address(self, slot: int) -> int:
        """0 when the slot is out of range."""
    def version(self, cluster_slot: int) -> int:
        """One 8-byte load (acquire): the cluster's availability version."""
    def available(self, ep_slot: int) -> bool: ...
    def rq_active(self, ep_slot: int) -> int: ...
    def take(self, bucket_slot: int, max_tokens: int, per_fill: int, interval_ms: int) -> bool:
        """One token now (CLOCK_MONOTONIC): True allowed, False limited."""
    def cluster_stats(self, slot: int) -> _ClusterStats: ...
    def endpoint_stats(self, slot: int) -> _EndpointStats: ...
    def bucket_stats(self, slot: int) -> _BucketStats: ...
    def set_health(self, cluster_slot: int, ep_slot: int, healthy: bool) -> bool:
        """True when the verdict changed (version bumped)."""
    def uneject_due(self, cluster_slot: int, ep_slot: int, cfg: ClusterCfg, now_ms: int = 0) -> bool:
        """True when the ejection ended now (version bumped); now_ms 0: now."""
    @property
    def ledger_slots(self) -> int: ...
    def reclaim(self, ledger: int) -> int: ...
    def reset_cluster(self, slot: int) -> None: ...
    def reset_endpoint(self, slot: int) -> None: ...
    def reset_bucket(self, slot: int) -> None: ...
    @staticmethod
    def now_ms() -> int:
        """CLOCK_MONOTONIC in ms."""
    def close(self, unlink: bool = False) -> None:
        """Unmaps (addresses handed out become invalid); idempotent."""
    def __enter__(self) -> GovernSegment: ...
    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None: ...
