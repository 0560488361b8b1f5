# extern declarations only: csrc/govern.h (the contracts are written there)
#
# The gv_cluster / gv_endpoint / gv_bucket fields are C11 atomics in C; they
# are declared here with their plain types. Reading one from Cython is an
# atomic load in the generated C; nothing here writes them directly (the
# gv_* functions do).
from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t


cdef extern from "govern.h" nogil:
    const unsigned long long GV_MAGIC
    const unsigned int GV_LAYOUT
    const unsigned int GV_HEADER_BYTES
    const unsigned int GV_UNLIMITED

    enum:
        GV_OK
        GV_5XX
        GV_GATEWAY

        GV_RETRY_5XX
        GV_RETRY_GATEWAY_ERROR
        GV_RETRY_RESET
        GV_RETRY_CONNECT_FAILURE
        GV_RETRY_REFUSED_STREAM
        GV_RETRY_RETRIABLE_4XX
        GV_RETRY_STATUS_CODES
        GV_MAX_RETRIABLE_CODES

        GV_ATTEMPT_CONNECT_FAIL
        GV_ATTEMPT_RESET
        GV_ATTEMPT_TIMEOUT
        GV_ATTEMPT_STATUS

    ctypedef struct gv_hdr:
        uint64_t magic
        uint32_t layout
        uint32_t ncluster, nendpoint, nbucket

    ctypedef struct gv_cluster:
        uint64_t version
        int64_t cx_active
        int64_t rq_pending
        int64_t rq_active
        int64_t rq_retry_active
        int64_t ejected
        uint64_t cx_overflow
        uint64_t rq_pending_overflow
        uint64_t rq_overflow
        uint64_t rq_retry_overflow
        uint64_t rq_retry
        uint64_t rq_retry_success
        uint64_t ejections_total
        uint64_t ejections_5xx
        uint64_t ejections_gateway
        uint64_t ejections_overflow

    ctypedef struct gv_endpoint:
        int64_t rq_active
        uint64_t rq_total
        uint32_t cons_5xx
        uint32_t cons_gw
        uint32_t ejected
        uint32_t ejections
        uint64_t eject_until_ms
        uint32_t hc_failed

    ctypedef struct gv_bucket:
        uint64_t state
        uint64_t allowed, limited

    ctypedef struct gv_cluster_cfg:
        uint32_t max_connections, max_pending_requests, max_requests, max_retries
        uint32_t budget_percent
        uint32_t min_retry_concurrency
        uint32_t od_enabled
        uint32_t consecutive_5xx
        uint32_t consecutive_gateway_failure
        uint32_t base_ejection_ms, max_ejection_ms
        uint32_t max_ejection_percent
        uint32_t nhosts

    ctypedef struct gv_retry:
        uint32_t num_retries
        uint32_t retry_on
        uint32_t per_try_timeout_ms
        uint32_t backoff_base_ms, backoff_max_ms
        uint32_t non_idempotent
        uint32_t ncodes
        uint16_t codes[8]

    uint64_t gv_segment_bytes(uint32_t ncluster, uint32_t nendpoint, uint32_t nbucket)
    void gv_segment_init(void *base, uint32_t ncluster, uint32_t nendpoint, uint32_t nbucket)
    int gv_segment_check(const void *base, uint64_t size)
    gv_cluster *gv_cluster_at(void *base, uint32_t slot)
    gv_endpoint *gv_endpoint_at(void *base, uint32_t slot)
    gv_bucket *gv_bucket_at(void *base, uint32_t slot)
    void gv_cluster_reset(gv_cluster *c)
    void gv_endpoint_reset(gv_endpoint *ep)
    void gv_bucket_reset(gv_bucket *b)

    uint64_t gv_now_ms()

    uint64_t gv_ledger_slots(const void *base)
    uint64_t gv_reclaim(void *base, int64_t *ledger)

    int gv_rq_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
    void gv_rq_release(gv_cluster *c)
    int gv_cx_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
    void gv_cx_release(gv_cluster *c)
    int gv_pending_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
    void gv_pending_release(gv_cluster *c)
    int gv_retry_acquire(gv_cluster *c, const gv_cluster_cfg *cfg)
    void gv_retry_release(gv_cluster *c)

    int gv_outlier_report(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, int outcome,
                          uint64_t now_ms)
    int gv_uneject_due(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, uint64_t now_ms)
    int gv_set_health(gv_cluster *c, gv_endpoint *ep, int healthy)
    int gv_endpoint_available(const gv_endpoint *ep)

    int gv_bucket_take(gv_bucket *b, uint32_t max_tokens, uint32_t tokens_per_fill,
                       uint32_t fill_interval_ms, uint64_t now_ms)

    int gv_retry_wanted(const gv_retry *r, int outcome, int status)
    uint32_t gv_backoff_ms(const gv_retry *r, uint32_t n, uint64_t draw)
    int gv_method_idempotent(const char *m, uint32_t len)
