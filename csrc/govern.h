/* govern.h - traffic-governance state shared by every worker, and the pure
 * decisions over it: circuit breakers, outlier ejection, endpoint health,
 * local rate-limit buckets, retry eligibility.
 *
 * Why shared memory: Envoy's circuit breakers, ejections and local rate
 * limits are per cluster / per route for the whole proxy, not per worker
 * thread. Our workers are processes, so the state lives in one segment
 * that the manager creates and every worker maps read-write; every field
 * that more than one process writes is a C11 atomic (lock-free on x86-64
 * and aarch64: checked by a static assert in govern.c).
 *
 * SEGMENT LAYOUT
 *   [gv_hdr, padded to 4096 bytes]
 *   [gv_cluster  clusters[ncluster]]    slot i: the cluster whose counter block is i * 16
 *   [gv_endpoint endpoints[nendpoint]]  slots given by the manager, stable per (cluster, ip, port)
 *   [gv_bucket   buckets[nbucket]]      slots given by the manager, stable per rate-limit owner
 * Every array entry is 64-byte aligned (no false sharing between slots).
 * Slots are zero when never used; the manager zeroes a slot (gv_*_reset)
 * before it hands it to a new owner.
 *
 * WHO WRITES WHAT
 *   workers (the C engine, through the functions below): breaker counts,
 *     overflow and retry counters, endpoint rq_active and consecutive error
 *     counts, ejections (gv_outlier_report), bucket tokens;
 *   the manager: endpoint hc_failed (active health checks), un-ejection
 *     (gv_uneject_due), slot resets.
 * Availability changes (eject, un-eject, health) bump the cluster's
 * `version`, so a worker re-reads availability only when it moved: one
 * 8-byte acquire load (a plain load on x86-64) per request for a watched
 * cluster; acquire, so the flags read after it are at least as new.
 *
 * All times are CLOCK_MONOTONIC milliseconds (the same clock in every
 * process of the host). No function blocks, allocates or makes a syscall
 * except gv_now_ms (clock_gettime, vDSO) and the segment functions.
 */
#ifndef FASTPROXY_GOVERN_H
#define FASTPROXY_GOVERN_H

#include <stdint.h>

#define GV_MAGIC   0x3156475046ULL   /* "FPGV1" little-endian */
#define GV_LAYOUT  1u
#define GV_HEADER_BYTES 4096u

/* "No limit" for a breaker threshold (Istio's default for every one). */
#define GV_UNLIMITED 0xffffffffu

typedef struct gv_hdr {
    uint64_t magic;
    uint32_t layout;
    uint32_t ncluster, nendpoint, nbucket;
} gv_hdr;

/* One cluster, all workers. 128 bytes. */
typedef struct gv_cluster {
    _Alignas(64) _Atomic uint64_t version;   /* bumped on each availability change */
    _Atomic int64_t cx_active;               /* upstream connections open */
    _Atomic int64_t rq_pending;              /* requests waiting for a connection (max_connections reached) */
    _Atomic int64_t rq_active;               /* requests in flight upstream (first attempts and retries) */
    _Atomic int64_t rq_retry_active;         /* retries in flight */
    _Atomic int64_t ejected;                 /* endpoints ejected now */
    _Atomic uint64_t cx_overflow;            /* Envoy upstream_cx_overflow */
    _Atomic uint64_t rq_pending_overflow;    /* upstream_rq_pending_overflow */
    _Atomic uint64_t rq_overflow;            /* upstream_rq_overflow (max_requests) */
    _Atomic uint64_t rq_retry_overflow;      /* upstream_rq_retry_overflow (max_retries or budget) */
    _Atomic uint64_t rq_retry;               /* upstream_rq_retry: retries started */
    _Atomic uint64_t rq_retry_success;       /* retries whose response was not retried again */
    _Atomic uint64_t ejections_total;        /* outlier_detection.ejections_enforced_total */
    _Atomic uint64_t ejections_5xx;          /* ejections_enforced_consecutive_5xx */
    _Atomic uint64_t ejections_gateway;      /* ejections_enforced_consecutive_gateway_failure */
    _Atomic uint64_t ejections_overflow;     /* ejections_overflow: max_ejection_percent stopped one */
} gv_cluster;

/* One endpoint, all workers. 64 bytes. */
typedef struct gv_endpoint {
    _Alignas(64) _Atomic int64_t rq_active;  /* requests in flight to it (least_request) */
    _Atomic uint64_t rq_total;               /* attempts sent to it (tests, /clusters) */
    _Atomic uint32_t cons_5xx;               /* consecutive 5xx (local-origin failures count as 503/504) */
    _Atomic uint32_t cons_gw;                /* consecutive 502/503/504 and local-origin failures */
    _Atomic uint32_t ejected;                /* 1 while ejected */
    _Atomic uint32_t ejections;              /* the ejection-time multiplier (times ejected, decays) */
    _Atomic uint64_t eject_until_ms;         /* when the current ejection may end */
    _Atomic uint32_t hc_failed;              /* 1: the active health check says unhealthy (manager) */
    uint32_t pad_;
} gv_endpoint;

/* One local rate-limit bucket. 64 bytes. state packs the fill epoch
 * (high 40 bits: now_ms / fill_interval_ms + 1, so that a used state is
 * never 0) and the tokens left (low 24). state 0: never used, a full bucket. */
typedef struct gv_bucket {
    _Alignas(64) _Atomic uint64_t state;
    _Atomic uint64_t allowed, limited;       /* counters: requests let through / refused */
} gv_bucket;

/* Per-cluster configuration, owned by the caller (the worker builds it from
 * the table). Breaker thresholds: GV_UNLIMITED = none. */
typedef struct gv_cluster_cfg {
    uint32_t max_connections, max_pending_requests, max_requests, max_retries;
    /* retry budget (Envoy's circuit_breakers.thresholds.retry_budget):
     * budget_percent = 0 means no budget (max_retries alone applies). */
    uint32_t budget_percent;                 /* retries may be this % of rq_active */
    uint32_t min_retry_concurrency;          /* ... but at least this many */
    /* outlier detection: enabled = 0 means none (errors are not tracked) */
    uint32_t od_enabled;
    uint32_t consecutive_5xx;                /* 0 = not enforced */
    uint32_t consecutive_gateway_failure;    /* 0 = not enforced */
    uint32_t base_ejection_ms, max_ejection_ms;
    uint32_t max_ejection_percent;           /* 0..100; at least one host may always be ejected */
    uint32_t nhosts;                         /* endpoints in the cluster now */
} gv_cluster_cfg;

/* ---- the segment ---------------------------------------------------------------- */

/* Size in bytes of a segment with these slot counts. */
uint64_t gv_segment_bytes(uint32_t ncluster, uint32_t nendpoint, uint32_t nbucket);
/* Writes the header into a zero-filled mapping of gv_segment_bytes(...) bytes. */
void gv_segment_init(void *base, uint32_t ncluster, uint32_t nendpoint, uint32_t nbucket);
/* 0 when base/size hold a valid segment, else a negative errno (-EINVAL: bad
 * magic or layout, -ERANGE: size smaller than the header says). */
int gv_segment_check(const void *base, uint64_t size);
/* Slot pointers; NULL when the slot is out of range. */
gv_cluster *gv_cluster_at(void *base, uint32_t slot);
gv_endpoint *gv_endpoint_at(void *base, uint32_t slot);
gv_bucket *gv_bucket_at(void *base, uint32_t slot);
void gv_cluster_reset(gv_cluster *c);
void gv_endpoint_reset(gv_endpoint *ep);
void gv_bucket_reset(gv_bucket *b);

uint64_t gv_now_ms(void);   /* CLOCK_MONOTONIC */

/* ---- per-worker ledger ----------------------------------------------------------------
 * A worker that dies mid-request cannot release what it held, and shared
 * atomics cannot tell whose share is whose. So each worker also keeps a
 * LEDGER of its own holdings (single writer: plain relaxed stores), in
 * memory that outlives it (its region of the counter segment). Layout, in
 * int64 slots: [ncluster][GV_LEDGER_CL] then [nendpoint] (rq_active).
 * When the worker is gone, the manager calls gv_reclaim: every holding is
 * subtracted from the shared counts and the ledger is zeroed, before a new
 * worker takes the region. */
#define GV_LEDGER_CL   4
#define GV_L_RQ        0   /* rq_active */
#define GV_L_CX        1   /* cx_active */
#define GV_L_PENDING   2   /* rq_pending */
#define GV_L_RETRY     3   /* rq_retry_active */

/* int64 slots of a ledger for this segment. */
uint64_t gv_ledger_slots(const void *base);
/* Adds d to what the ledger holds of counter `what` (GV_L_*) of cluster c, or
 * of endpoint ep's rq_active; nothing when ledger is NULL or the pointer is
 * not a slot of base. */
void gv_ledger_add(const void *base, int64_t *ledger, const gv_cluster *c, int what, int64_t d);
void gv_ledger_add_ep(const void *base, int64_t *ledger, const gv_endpoint *ep, int64_t d);
/* Manager, the ledger's worker gone: undoes its holdings, zeroes the ledger.
 * Returns how many holdings (sum of absolute values) it undid. */
uint64_t gv_reclaim(void *base, int64_t *ledger);

/* ---- circuit breakers -------------------------------------------------------------
 * Each acquire is an atomic increment that is undone when it would pass
 * the threshold: the count never stays above it, whatever the number of
 * workers. On refusal the matching *_overflow counter is incremented.
 * Every successful acquire must be paired with one release. */
int gv_rq_acquire(gv_cluster *c, const gv_cluster_cfg *cfg);        /* 1 ok, 0 overflow (max_requests) */
void gv_rq_release(gv_cluster *c);
int gv_cx_acquire(gv_cluster *c, const gv_cluster_cfg *cfg);        /* 1 ok, 0 at max_connections
                                                                       (cx_overflow counted) */
void gv_cx_release(gv_cluster *c);
int gv_pending_acquire(gv_cluster *c, const gv_cluster_cfg *cfg);   /* 1 ok, 0 overflow */
void gv_pending_release(gv_cluster *c);
/* A retry may start: under max_retries and, when a budget is set, under
 * max(min_retry_concurrency, budget_percent% of rq_active). 1: acquired
 * (rq_retry counted), 0: refused (rq_retry_overflow counted). */
int gv_retry_acquire(gv_cluster *c, const gv_cluster_cfg *cfg);
void gv_retry_release(gv_cluster *c);

/* ---- outlier detection -------------------------------------------------------------
 * One attempt's outcome at one endpoint. GV_OK: a response below 500 (it
 * resets both consecutive counts). GV_5XX: a 5xx response other than
 * 502/503/504. GV_GATEWAY: 502, 503 or 504, or a local-origin failure
 * (connect failure, reset, timeout; Envoy maps these to 503/504 when
 * split_external_local_origin_errors is false). A gateway failure counts
 * toward both consecutive_5xx and consecutive_gateway_failure.
 * When a count reaches its threshold the endpoint is ejected, unless it is
 * ejected already or the cluster has max_ejection_percent of nhosts ejected
 * (ejections_overflow then; one ejection is always allowed). Ejecting sets
 * ejected = 1, eject_until = now + base_ejection_ms * ejections (after the
 * increment, which stops once base * ejections reaches the cap, as Envoy's
 * backoff does; capped at max(base, max_ejection_ms)), increments
 * cluster.ejected, and bumps cluster.version. Returns 1 when this call
 * ejected the endpoint. Does nothing (0) when cfg->od_enabled is 0. */
#define GV_OK      0
#define GV_5XX     1
#define GV_GATEWAY 2
int gv_outlier_report(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, int outcome, uint64_t now_ms);

/* Manager, each interval: un-ejects ep when it is ejected and eject_until
 * has passed (ejected = 0, counts zeroed, cluster.ejected decremented,
 * version bumped; returns 1). A host that is not ejected and whose
 * multiplier is above 0 has it decremented once every call made at least
 * base_ejection_ms after its last ejection ended (Envoy's decay); returns 0. */
int gv_uneject_due(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, uint64_t now_ms);

/* Manager: sets the health-check verdict; bumps version when it changed.
 * Returns 1 when it changed. */
int gv_set_health(gv_cluster *c, gv_endpoint *ep, int healthy);

/* Usable for new requests: not ejected and not failed by a health check. */
static inline int gv_endpoint_available(const gv_endpoint *ep)
{
    return !__atomic_load_n((const uint32_t *)&ep->ejected, __ATOMIC_RELAXED) &&
           !__atomic_load_n((const uint32_t *)&ep->hc_failed, __ATOMIC_RELAXED);
}

/* ---- local rate limit ------------------------------------------------------------
 * Envoy's token bucket: it starts full (max_tokens); at each multiple of
 * fill_interval_ms on the monotonic clock, tokens_per_fill are added (up to
 * max_tokens). A request takes one token or is refused. All workers share
 * the bucket (one CAS loop on state). Returns 1: allowed, 0: limited; the
 * matching counter is incremented. max_tokens < 2^24. */
int gv_bucket_take(gv_bucket *b, uint32_t max_tokens, uint32_t tokens_per_fill, uint32_t fill_interval_ms,
                   uint64_t now_ms);

/* One local rate limit as a route carries it (b NULL: none). */
typedef struct gv_limit {
    gv_bucket *b;
    uint32_t max_tokens, tokens_per_fill, fill_interval_ms;
} gv_limit;

/* ---- retries (pure) -----------------------------------------------------------------
 * retry_on bits, Envoy's x-envoy-retry-on values. */
#define GV_RETRY_5XX              0x01   /* any 5xx, a reset, a connect failure, a per-try timeout */
#define GV_RETRY_GATEWAY_ERROR    0x02   /* 502, 503, 504, a per-try timeout */
#define GV_RETRY_RESET            0x04   /* the upstream reset or closed before the response head */
#define GV_RETRY_CONNECT_FAILURE  0x08
#define GV_RETRY_REFUSED_STREAM   0x10   /* HTTP/2 REFUSED_STREAM; for HTTP/1 nothing yet */
#define GV_RETRY_RETRIABLE_4XX    0x20   /* 409 */
#define GV_RETRY_STATUS_CODES     0x40   /* the status is in retriable_status_codes */

#define GV_MAX_RETRIABLE_CODES 8

typedef struct gv_retry {
    uint32_t num_retries;                  /* Istio `attempts`: retries after the first try */
    uint32_t retry_on;                     /* GV_RETRY_* */
    uint32_t per_try_timeout_ms;           /* 0: none (the route timeout alone) */
    uint32_t backoff_base_ms, backoff_max_ms;   /* Envoy: 25, 250 */
    uint32_t non_idempotent;               /* 1: also retry requests the upstream may have acted on */
    uint32_t ncodes;
    uint16_t codes[GV_MAX_RETRIABLE_CODES];
} gv_retry;

/* What ended an attempt (before any response byte went downstream). */
#define GV_ATTEMPT_CONNECT_FAIL 1   /* the upstream never saw the request */
#define GV_ATTEMPT_RESET        2   /* closed or reset before a response head */
#define GV_ATTEMPT_TIMEOUT      3   /* the per-try timeout fired */
#define GV_ATTEMPT_STATUS       4   /* a final response head with `status` */

/* 1 when retry_on covers the outcome. Safety is the caller's: a request
 * the upstream may have received (anything but CONNECT_FAIL) is retried
 * only when its method is idempotent or r->non_idempotent is set. */
int gv_retry_wanted(const gv_retry *r, int outcome, int status);

/* The wait before retry n (1 = the first retry): Envoy's fully jittered
 * exponential backoff, uniform in [0, min(max, base * (2^n - 1))] ms.
 * draw: a uniform random 64-bit number. */
uint32_t gv_backoff_ms(const gv_retry *r, uint32_t n, uint64_t draw);

/* Idempotent per RFC 9110 §9.2.2 (GET HEAD OPTIONS TRACE PUT DELETE). */
int gv_method_idempotent(const char *m, uint32_t len);

#endif /* FASTPROXY_GOVERN_H */
