/* govern.c - traffic-governance state in shared memory: circuit breakers,
 * outlier ejection, endpoint health, local rate-limit buckets, retries.
 * The contract of every function is in govern.h.
 *
 * Every field that several processes write is a C11 atomic. They are all
 * lock-free (asserted below), hence address-free: the same atomic works
 * from every process that maps the segment, at whatever address.
 *
 * Memory ordering: counters and thresholds use relaxed operations (each is
 * one independent number; nothing else is published through them). The
 * cluster's `version` is bumped with release after the availability change
 * it announces, so a worker that loads the new version with acquire (a plain
 * load on x86-64) and then reads the endpoints' flags sees that change.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L   /* clock_gettime under a strict -std=c11 */
#endif
#include "govern.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

/* Shared-memory atomics must not fall back to a process-local lock. */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free");
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2, "long atomics must be lock-free");
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(sizeof(_Atomic uint64_t) == 8 && sizeof(_Atomic int64_t) == 8 &&
               sizeof(_Atomic uint32_t) == 4, "atomics have the size of their plain type");

_Static_assert(sizeof(gv_hdr) <= GV_HEADER_BYTES, "the header fits its page");
_Static_assert(GV_HEADER_BYTES % 64 == 0, "slot arrays start 64-byte aligned");
_Static_assert(sizeof(gv_cluster) == 128, "gv_cluster is 128 bytes");
_Static_assert(sizeof(gv_endpoint) == 64, "gv_endpoint is 64 bytes");
_Static_assert(sizeof(gv_bucket) == 64, "gv_bucket is 64 bytes");
_Static_assert(_Alignof(gv_cluster) == 64 && _Alignof(gv_endpoint) == 64 && _Alignof(gv_bucket) == 64,
               "every slot is 64-byte aligned");

#define RLX memory_order_relaxed

/* Bucket state: fill epoch (+1) in the high 40 bits, tokens in the low 24. */
#define BK_TOKEN_BITS 24
#define BK_TOKEN_MASK ((UINT64_C(1) << BK_TOKEN_BITS) - 1)
#define BK_EPOCH_MASK ((UINT64_C(1) << (64 - BK_TOKEN_BITS)) - 1)

/* ---- the segment ---------------------------------------------------------------- */

uint64_t gv_segment_bytes(uint32_t ncluster, uint32_t nendpoint, uint32_t nbucket)
{
    /* at most 4096 + 2^32 * (128 + 64 + 64): no overflow in 64 bits */
    return (uint64_t)GV_HEADER_BYTES + (uint64_t)ncluster * sizeof(gv_cluster) +
           (uint64_t)nendpoint * sizeof(gv_endpoint) + (uint64_t)nbucket * sizeof(gv_bucket);
}

void gv_segment_init(void *base, uint32_t ncluster, uint32_t nendpoint, uint32_t nbucket)
{
    gv_hdr *h = base;

    h->layout = GV_LAYOUT;
    h->ncluster = ncluster;
    h->nendpoint = nendpoint;
    h->nbucket = nbucket;
    /* The magic goes last: a process that sees it sees the whole header. */
    __atomic_store_n(&h->magic, GV_MAGIC, __ATOMIC_RELEASE);
}

int gv_segment_check(const void *base, uint64_t size)
{
    const gv_hdr *h = base;

    if (base == NULL)
        return -EINVAL;
    if (size < sizeof(gv_hdr))
        return -ERANGE;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != GV_MAGIC || h->layout != GV_LAYOUT)
        return -EINVAL;
    if (size < gv_segment_bytes(h->ncluster, h->nendpoint, h->nbucket))
        return -ERANGE;
    return 0;
}

static inline unsigned char *clusters_of(void *base)
{
    return (unsigned char *)base + GV_HEADER_BYTES;
}

static inline unsigned char *endpoints_of(void *base)
{
    return clusters_of(base) + (size_t)((const gv_hdr *)base)->ncluster * sizeof(gv_cluster);
}

static inline unsigned char *buckets_of(void *base)
{
    return endpoints_of(base) + (size_t)((const gv_hdr *)base)->nendpoint * sizeof(gv_endpoint);
}

gv_cluster *gv_cluster_at(void *base, uint32_t slot)
{
    if (base == NULL || slot >= ((const gv_hdr *)base)->ncluster)
        return NULL;
    return (gv_cluster *)(void *)(clusters_of(base) + (size_t)slot * sizeof(gv_cluster));
}

gv_endpoint *gv_endpoint_at(void *base, uint32_t slot)
{
    if (base == NULL || slot >= ((const gv_hdr *)base)->nendpoint)
        return NULL;
    return (gv_endpoint *)(void *)(endpoints_of(base) + (size_t)slot * sizeof(gv_endpoint));
}

gv_bucket *gv_bucket_at(void *base, uint32_t slot)
{
    if (base == NULL || slot >= ((const gv_hdr *)base)->nbucket)
        return NULL;
    return (gv_bucket *)(void *)(buckets_of(base) + (size_t)slot * sizeof(gv_bucket));
}

/* Resets store zero field by field (a memset over atomics is not an atomic
 * write; another process may still be reading the slot). */
void gv_cluster_reset(gv_cluster *c)
{
    atomic_store_explicit(&c->version, 0, RLX);
    atomic_store_explicit(&c->cx_active, 0, RLX);
    atomic_store_explicit(&c->rq_pending, 0, RLX);
    atomic_store_explicit(&c->rq_active, 0, RLX);
    atomic_store_explicit(&c->rq_retry_active, 0, RLX);
    atomic_store_explicit(&c->ejected, 0, RLX);
    atomic_store_explicit(&c->cx_overflow, 0, RLX);
    atomic_store_explicit(&c->rq_pending_overflow, 0, RLX);
    atomic_store_explicit(&c->rq_overflow, 0, RLX);
    atomic_store_explicit(&c->rq_retry_overflow, 0, RLX);
    atomic_store_explicit(&c->rq_retry, 0, RLX);
    atomic_store_explicit(&c->rq_retry_success, 0, RLX);
    atomic_store_explicit(&c->ejections_total, 0, RLX);
    atomic_store_explicit(&c->ejections_5xx, 0, RLX);
    atomic_store_explicit(&c->ejections_gateway, 0, RLX);
    atomic_store_explicit(&c->ejections_overflow, 0, RLX);
}

void gv_endpoint_reset(gv_endpoint *ep)
{
    atomic_store_explicit(&ep->rq_active, 0, RLX);
    atomic_store_explicit(&ep->rq_total, 0, RLX);
    atomic_store_explicit(&ep->cons_5xx, 0, RLX);
    atomic_store_explicit(&ep->cons_gw, 0, RLX);
    atomic_store_explicit(&ep->ejected, 0, RLX);
    atomic_store_explicit(&ep->ejections, 0, RLX);
    atomic_store_explicit(&ep->eject_until_ms, 0, RLX);
    atomic_store_explicit(&ep->hc_failed, 0, RLX);
    ep->pad_ = 0;
}

void gv_bucket_reset(gv_bucket *b)
{
    atomic_store_explicit(&b->state, 0, RLX);
    atomic_store_explicit(&b->allowed, 0, RLX);
    atomic_store_explicit(&b->limited, 0, RLX);
}

uint64_t gv_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- circuit breakers ------------------------------------------------------------- */

/* The increment is the reservation: whoever's increment took the count past
 * max gives it back, so at most `max` reservations ever hold at once (the
 * count may pass max for the instant between an increment and its undo). */
static inline int breaker_acquire(_Atomic int64_t *count, uint32_t max, _Atomic uint64_t *overflow)
{
    int64_t before = atomic_fetch_add_explicit(count, 1, RLX);

    if (before < (int64_t)max)
        return 1;
    atomic_fetch_sub_explicit(count, 1, RLX);
    atomic_fetch_add_explicit(overflow, 1, RLX);
    return 0;
}

int gv_rq_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
{
    return breaker_acquire(&c->rq_active, cfg->max_requests, &c->rq_overflow);
}

void gv_rq_release(gv_cluster *c)
{
    atomic_fetch_sub_explicit(&c->rq_active, 1, RLX);
}

int gv_cx_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
{
    return breaker_acquire(&c->cx_active, cfg->max_connections, &c->cx_overflow);
}

void gv_cx_release(gv_cluster *c)
{
    atomic_fetch_sub_explicit(&c->cx_active, 1, RLX);
}

int gv_pending_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
{
    return breaker_acquire(&c->rq_pending, cfg->max_pending_requests, &c->rq_pending_overflow);
}

void gv_pending_release(gv_cluster *c)
{
    atomic_fetch_sub_explicit(&c->rq_pending, 1, RLX);
}

int gv_retry_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
{
    uint64_t limit = cfg->max_retries;

    if (cfg->budget_percent != 0) {
        int64_t active = atomic_load_explicit(&c->rq_active, RLX);
        uint64_t budget = active > 0 ? (uint64_t)active * cfg->budget_percent / 100u : 0;

        if (budget < cfg->min_retry_concurrency)
            budget = cfg->min_retry_concurrency;
        if (budget < limit)
            limit = budget;
    }
    if (atomic_fetch_add_explicit(&c->rq_retry_active, 1, RLX) < (int64_t)limit) {
        atomic_fetch_add_explicit(&c->rq_retry, 1, RLX);
        return 1;
    }
    atomic_fetch_sub_explicit(&c->rq_retry_active, 1, RLX);
    atomic_fetch_add_explicit(&c->rq_retry_overflow, 1, RLX);
    return 0;
}

void gv_retry_release(gv_cluster *c)
{
    atomic_fetch_sub_explicit(&c->rq_retry_active, 1, RLX);
}

/* ---- outlier detection ------------------------------------------------------------- */

/* Availability changed: workers re-read the endpoints after seeing this. */
static inline void bump_version(gv_cluster *c)
{
    atomic_fetch_add_explicit(&c->version, 1, memory_order_release);
}

/* Ejections the cluster allows at once: max_ejection_percent of nhosts,
 * rounded down, but always at least one (Envoy). */
static inline int64_t ejection_cap(const gv_cluster_cfg *cfg)
{
    uint64_t pct = cfg->max_ejection_percent > 100 ? 100 : cfg->max_ejection_percent;
    uint64_t cap = (uint64_t)cfg->nhosts * pct / 100u;

    return cap < 1 ? 1 : (int64_t)cap;
}

/* Longest ejection: max(base, max_ejection_ms). */
static inline uint64_t ejection_ceiling(const gv_cluster_cfg *cfg)
{
    return cfg->max_ejection_ms > cfg->base_ejection_ms ? cfg->max_ejection_ms : cfg->base_ejection_ms;
}

/* The multiplier grows by one per ejection until base * multiplier reaches
 * the ceiling (Envoy's backoff); returns its value after this ejection. The
 * manager may decay it concurrently, hence the CAS. */
static uint32_t grow_multiplier(gv_endpoint *ep, const gv_cluster_cfg *cfg)
{
    uint64_t ceiling = ejection_ceiling(cfg);
    uint32_t old = atomic_load_explicit(&ep->ejections, RLX), next;

    do {
        next = old;
        if ((uint64_t)old * cfg->base_ejection_ms < ceiling && old < UINT32_MAX)
            next = old + 1;
    } while (next != old && !atomic_compare_exchange_weak_explicit(&ep->ejections, &old, next, RLX, RLX));
    return next;
}

/* Ejects ep unless it is ejected already or the cluster is at its cap.
 * The cluster's count is reserved first (increment, undone when over the
 * cap), then ep->ejected goes 0 -> 1 by CAS; so ep->ejected never flips to
 * 1 and back (a worker could cache that flash with no version bump), and
 * cluster.ejected never stays above the cap. */
static int eject(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, int gateway, uint64_t now_ms)
{
    uint32_t zero = 0, mult;
    uint64_t span;

    if (atomic_load_explicit(&ep->ejected, RLX))
        return 0;
    if (atomic_fetch_add_explicit(&c->ejected, 1, RLX) >= ejection_cap(cfg)) {
        atomic_fetch_sub_explicit(&c->ejected, 1, RLX);
        atomic_fetch_add_explicit(&c->ejections_overflow, 1, RLX);
        return 0;
    }
    if (!atomic_compare_exchange_strong_explicit(&ep->ejected, &zero, 1, memory_order_acq_rel, RLX)) {
        atomic_fetch_sub_explicit(&c->ejected, 1, RLX);   /* another worker ejected it */
        return 0;
    }
    mult = grow_multiplier(ep, cfg);
    span = (uint64_t)cfg->base_ejection_ms * mult;
    if (span > ejection_ceiling(cfg))
        span = ejection_ceiling(cfg);
    /* Between the CAS and this store the manager could see ejected = 1 with
     * the previous (past) eject_until and un-eject early: counts stay exact
     * (its CAS 1 -> 0 pairs with our increment), only this ejection is cut
     * short. The window is a few instructions; a lock would cost more. */
    atomic_store_explicit(&ep->eject_until_ms, now_ms + span, RLX);
    atomic_store_explicit(&ep->cons_5xx, 0, RLX);
    atomic_store_explicit(&ep->cons_gw, 0, RLX);
    atomic_fetch_add_explicit(&c->ejections_total, 1, RLX);
    atomic_fetch_add_explicit(gateway ? &c->ejections_gateway : &c->ejections_5xx, 1, RLX);
    bump_version(c);
    return 1;
}

/* Zeroes a count, skipping the store (and the cache-line write) when it is
 * zero already: the common case, every successful response. */
static inline void clear_count(_Atomic uint32_t *n)
{
    if (atomic_load_explicit(n, RLX) != 0)
        atomic_store_explicit(n, 0, RLX);
}

int gv_outlier_report(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, int outcome, uint64_t now_ms)
{
    uint32_t n5, ngw = 0;

    if (!cfg->od_enabled || (outcome != GV_OK && outcome != GV_5XX && outcome != GV_GATEWAY))
        return 0;
    if (outcome == GV_OK) {
        clear_count(&ep->cons_5xx);
        clear_count(&ep->cons_gw);
        return 0;
    }
    n5 = atomic_fetch_add_explicit(&ep->cons_5xx, 1, RLX) + 1;
    if (outcome == GV_GATEWAY)
        ngw = atomic_fetch_add_explicit(&ep->cons_gw, 1, RLX) + 1;
    else
        clear_count(&ep->cons_gw);   /* a 500 breaks a run of gateway failures (Envoy) */
    /* At or past a threshold: each further failure tries again, so an
     * ejection refused by the cap happens once room frees up. With both
     * thresholds reached the ejection counts as consecutive_5xx. */
    if (cfg->consecutive_5xx != 0 && n5 >= cfg->consecutive_5xx)
        return eject(c, ep, cfg, 0, now_ms);
    if (cfg->consecutive_gateway_failure != 0 && ngw >= cfg->consecutive_gateway_failure)
        return eject(c, ep, cfg, 1, now_ms);
    return 0;
}

int gv_uneject_due(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, uint64_t now_ms)
{
    uint32_t one = 1, mult;
    uint32_t ejected = atomic_load_explicit(&ep->ejected, memory_order_acquire);
    uint64_t until = atomic_load_explicit(&ep->eject_until_ms, RLX);   /* after: see eject() */

    if (ejected) {
        if (now_ms < until)
            return 0;
        if (!atomic_compare_exchange_strong_explicit(&ep->ejected, &one, 0, memory_order_acq_rel, RLX))
            return 0;
        atomic_store_explicit(&ep->cons_5xx, 0, RLX);
        atomic_store_explicit(&ep->cons_gw, 0, RLX);
        atomic_fetch_sub_explicit(&c->ejected, 1, RLX);
        bump_version(c);
        return 1;
    }
    /* Decay: one step per call once the host has stayed in base_ejection_ms
     * past the end of its last ejection (eject_until: when it could end). */
    mult = atomic_load_explicit(&ep->ejections, RLX);
    while (mult > 0 && now_ms >= until && now_ms - until >= cfg->base_ejection_ms) {
        if (atomic_compare_exchange_weak_explicit(&ep->ejections, &mult, mult - 1, RLX, RLX))
            break;
    }
    return 0;
}

int gv_set_health(gv_cluster *c, gv_endpoint *ep, int healthy)
{
    uint32_t failed = healthy ? 0 : 1;

    if (atomic_exchange_explicit(&ep->hc_failed, failed, memory_order_acq_rel) == failed)
        return 0;
    bump_version(c);
    return 1;
}

/* ---- local rate limit ------------------------------------------------------------ */

int gv_bucket_take(gv_bucket *b, uint32_t max_tokens, uint32_t tokens_per_fill, uint32_t fill_interval_ms,
                   uint64_t now_ms)
{
    uint64_t epoch, old, next, have, at;

    if (max_tokens > BK_TOKEN_MASK)
        max_tokens = (uint32_t)BK_TOKEN_MASK;
    if (fill_interval_ms == 0)
        fill_interval_ms = 1;
    /* +1: epoch 0 stays distinguishable from state 0 ("never used");
     * 2^40 epochs of 1 ms are 34 years of uptime, the mask never bites. */
    epoch = ((now_ms / fill_interval_ms + 1) & BK_EPOCH_MASK);
    if (epoch == 0)
        epoch = 1;
    old = atomic_load_explicit(&b->state, RLX);
    for (;;) {
        if (old == 0) {
            have = max_tokens;
            at = epoch;
        } else {
            have = old & BK_TOKEN_MASK;
            at = old >> BK_TOKEN_BITS;
            if (have > max_tokens)
                have = max_tokens;           /* max_tokens was lowered */
            if (epoch > at) {
                /* (epoch - at) fills; at least one token each, so that many
                 * fill the bucket whatever the rate (and no overflow). */
                uint64_t fills = epoch - at;
                if (fills >= max_tokens || have + fills * tokens_per_fill >= max_tokens)
                    have = tokens_per_fill ? max_tokens : have;
                else
                    have += fills * tokens_per_fill;
                at = epoch;
            } else if (at - epoch > 1) {
                /* Far behind the stored epoch: not a racing worker whose
                 * clock read is a moment old (those are at most one fill
                 * behind and change nothing) but a longer fill interval
                 * than the one that wrote it. Resync, without a refill,
                 * rather than starve until the clock catches up. */
                at = epoch;
            }
        }
        if (have == 0) {
            next = (at << BK_TOKEN_BITS);
            if (next == old || atomic_compare_exchange_weak_explicit(&b->state, &old, next, RLX, RLX)) {
                atomic_fetch_add_explicit(&b->limited, 1, RLX);
                return 0;
            }
            continue;
        }
        next = (at << BK_TOKEN_BITS) | (have - 1);
        if (atomic_compare_exchange_weak_explicit(&b->state, &old, next, RLX, RLX)) {
            atomic_fetch_add_explicit(&b->allowed, 1, RLX);
            return 1;
        }
    }
}

/* ---- retries (pure) ------------------------------------------------------------------ */

static int status_listed(const gv_retry *r, int status)
{
    uint32_t i, n = r->ncodes < GV_MAX_RETRIABLE_CODES ? r->ncodes : GV_MAX_RETRIABLE_CODES;

    for (i = 0; i < n; i++)
        if (r->codes[i] == status)
            return 1;
    return 0;
}

int gv_retry_wanted(const gv_retry *r, int outcome, int status)
{
    uint32_t on = r->retry_on;

    switch (outcome) {
    case GV_ATTEMPT_CONNECT_FAIL:
        return (on & (GV_RETRY_5XX | GV_RETRY_CONNECT_FAILURE)) != 0;
    case GV_ATTEMPT_RESET:
        return (on & (GV_RETRY_5XX | GV_RETRY_RESET)) != 0;
    case GV_ATTEMPT_TIMEOUT:
        return (on & (GV_RETRY_5XX | GV_RETRY_GATEWAY_ERROR)) != 0;
    case GV_ATTEMPT_STATUS:
        if ((on & GV_RETRY_5XX) && status >= 500)
            return 1;
        if ((on & GV_RETRY_GATEWAY_ERROR) && status >= 502 && status <= 504)
            return 1;
        if ((on & GV_RETRY_RETRIABLE_4XX) && status == 409)
            return 1;
        if ((on & GV_RETRY_STATUS_CODES) && status_listed(r, status))
            return 1;
        /* GV_RETRY_REFUSED_STREAM: an HTTP/2 stream error, never an HTTP/1 outcome */
        return 0;
    default:
        return 0;
    }
}

uint32_t gv_backoff_ms(const gv_retry *r, uint32_t n, uint64_t draw)
{
    uint64_t ceiling = r->backoff_max_ms;

    /* base * (2^n - 1), computed only while it cannot overflow: base and
     * 2^n - 1 both below 2^32 keep the product below 2^64. */
    if (n < 32) {
        uint64_t grown = (uint64_t)r->backoff_base_ms * ((UINT64_C(1) << n) - 1);
        if (grown < ceiling)
            ceiling = grown;
    } else if (r->backoff_base_ms == 0) {
        ceiling = 0;
    }
    return (uint32_t)(draw % (ceiling + 1));
}

int gv_method_idempotent(const char *m, uint32_t len)
{
    switch (len) {
    case 3:
        return memcmp(m, "GET", 3) == 0 || memcmp(m, "PUT", 3) == 0;
    case 4:
        return memcmp(m, "HEAD", 4) == 0;
    case 5:
        return memcmp(m, "TRACE", 5) == 0;
    case 6:
        return memcmp(m, "DELETE", 6) == 0;
    case 7:
        return memcmp(m, "OPTIONS", 7) == 0;
    default:
        return 0;
    }
}

/* ---- per-worker ledger ----------------------------------------------------------- */

uint64_t gv_ledger_slots(const void *base)
{
    const gv_hdr *h = base;

    return (uint64_t)h->ncluster * GV_LEDGER_CL + h->nendpoint;
}

void gv_ledger_add(const void *base, int64_t *ledger, const gv_cluster *c, int what, int64_t d)
{
    const gv_hdr *h = base;
    const gv_cluster *first;
    uint64_t i;

    if (!ledger || !c)
        return;
    first = (const gv_cluster *)((const char *)base + GV_HEADER_BYTES);
    if (c < first || (i = (uint64_t)(c - first)) >= h->ncluster)
        return;
    /* single writer: the owning worker */
    __atomic_store_n(&ledger[i * GV_LEDGER_CL + (uint64_t)what],
                     __atomic_load_n(&ledger[i * GV_LEDGER_CL + (uint64_t)what], __ATOMIC_RELAXED) + d,
                     __ATOMIC_RELAXED);
}

void gv_ledger_add_ep(const void *base, int64_t *ledger, const gv_endpoint *ep, int64_t d)
{
    const gv_hdr *h = base;
    const gv_endpoint *first;
    uint64_t i, at;

    if (!ledger || !ep)
        return;
    first = (const gv_endpoint *)((const char *)base + GV_HEADER_BYTES + (uint64_t)h->ncluster * sizeof(gv_cluster));
    if (ep < first || (i = (uint64_t)(ep - first)) >= h->nendpoint)
        return;
    at = (uint64_t)h->ncluster * GV_LEDGER_CL + i;
    __atomic_store_n(&ledger[at], __atomic_load_n(&ledger[at], __ATOMIC_RELAXED) + d, __ATOMIC_RELAXED);
}

static uint64_t undo(_Atomic int64_t *shared, int64_t *held)
{
    int64_t v = __atomic_exchange_n(held, 0, __ATOMIC_RELAXED);

    if (!v)
        return 0;
    atomic_fetch_sub_explicit(shared, v, memory_order_relaxed);
    return (uint64_t)(v < 0 ? -v : v);
}

uint64_t gv_reclaim(void *base, int64_t *ledger)
{
    const gv_hdr *h = base;
    uint64_t n = 0;
    uint32_t i;

    if (!ledger)
        return 0;
    for (i = 0; i < h->ncluster; i++) {
        gv_cluster *c = gv_cluster_at(base, i);
        int64_t *l = &ledger[(uint64_t)i * GV_LEDGER_CL];

        n += undo(&c->rq_active, &l[GV_L_RQ]);
        n += undo(&c->cx_active, &l[GV_L_CX]);
        n += undo(&c->rq_pending, &l[GV_L_PENDING]);
        n += undo(&c->rq_retry_active, &l[GV_L_RETRY]);
    }
    for (i = 0; i < h->nendpoint; i++)
        n += undo(&gv_endpoint_at(base, i)->rq_active, &ledger[(uint64_t)h->ncluster * GV_LEDGER_CL + i]);
    return n;
}
