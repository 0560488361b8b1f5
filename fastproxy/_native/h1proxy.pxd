# extern declarations only: csrc/h1proxy.h (the contracts are written there)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastproxy._native.http1 cimport http1_framing, http1_limits, http1_parser
from fastproxy._native.relay cimport fp_addr
from fastproxy._native.rewrite cimport rw_ops, rw_str


cdef extern from "govern.h" nogil:
    ctypedef struct gv_limit:
        void *b
        uint32_t max_tokens, tokens_per_fill, fill_interval_ms


cdef extern from "h1proxy.h" nogil:
    enum:
        H1_ACT_PROXY
        H1_ACT_RESPOND
        H1_EV_CLOSED
        H1_EV_DETACH
        H1_DETACH_HTTP2
        H1_DETACH_TLS
        H1_DETACH_OPAQUE
        H1_DETACH_TIMEOUT
        H1_DETACH_TUNNEL
        H1_F_UF
        H1_F_UT
        H1_F_UC
        H1_F_NR
        H1_F_DC
        H1_F_DPE
        H1_F_UPE
        H1_F_UO
        H1_F_UH
        H1_F_RL
        H1_F_FI
        H1_F_DI
        H1_F_URX
        H1_F_SI
        H1_SERIES_SLOTS
        H1_G_SERIES_OVERFLOW
        H1_G_RECORDS_DROPPED

    ctypedef struct h1_route:
        int action
        uint32_t flags
        fp_addr upstream
        fp_addr source
        uint32_t cluster_block
        uint32_t connect_timeout_ms
        uint32_t timeout_ms
        const rw_ops *req_ops
        const rw_ops *resp_ops
        int status
        rw_str reason
        rw_str headers
        rw_str body
        rw_str name
        void *ref
        void *gcl
        const void *gcfg
        void *gep
        uint32_t ep_slot
        const void *retry
        uint32_t idle_timeout_ms
        uint32_t delay_ms
        gv_limit limits[2]

    ctypedef int (*h1_route_fn)(void *cb_data, void *conn_user, const char *buf,
                                const http1_parser *p, const http1_framing *f, h1_route *out)
    ctypedef void (*h1_release_fn)(void *cb_data, void *ref)
    ctypedef int (*h1_retry_fn)(void *cb_data, void *conn_user, void *ref, const uint32_t *tried,
                                unsigned ntried, h1_route *out)

    ctypedef struct h1_config:
        http1_limits limits
        uint32_t buffer_bytes
        uint32_t pool_max_idle
        uint32_t pool_idle_ms
        uint32_t client_idle_ms
        uint64_t *counters
        uint32_t counters_len
        h1_route_fn route
        h1_release_fn release
        h1_retry_fn retry
        void *gv_base
        int64_t *gv_ledger
        void *cb_data
        uint32_t series_base
        uint32_t series_max
        int records
        uint32_t records_cap
        int tracing
        double trace_sampling

    ctypedef struct h1_conn_opts:
        int detect
        uint32_t detect_ms
        uint32_t listener_block
        rw_str peer
        rw_str proto
        rw_str default_host
        int request_id
        uint32_t headers_timeout_ms
        rw_str peer_addr
        rw_str original_dst

    ctypedef struct h1_record:
        uint64_t start_us
        uint64_t duration_us
        uint64_t upstream_us
        uint64_t bytes_received
        uint64_t bytes_sent
        uint32_t status
        uint32_t flags
        uint32_t cluster_block, listener_block
        uint8_t minor, traced, has_parent, sampled
        uint8_t trace_id[16]
        uint8_t span_id[8]
        uint8_t parent_id[8]
        uint16_t method_len, path_len, authority_len, ua_len, rid_len, upstream_len, peer_len, odst_len, route_len
        char method[1]
        char path[1]
        char authority[1]
        char ua[1]
        char rid[1]
        char upstream[1]
        char peer[1]
        char odst[1]
        char route[1]

    ctypedef struct h1_engine:
        pass

    ctypedef struct h1_conn:
        pass

    ctypedef struct h1_event:
        int kind
        int detach
        void *user
        int fd
        int upstream_fd
        uint32_t cluster_block
        uint64_t requests
        uint32_t flags

    ctypedef struct h1_stats:
        uint64_t runs, events, requests, local_responses
        uint64_t upstream_connects, pool_reuses, pool_evictions, ka_replays, retries
        unsigned conns, upstream_open, upstream_idle, buffers_free, buffers_total

    h1_engine *h1_engine_new(const h1_config *cfg)
    int h1_engine_fd(const h1_engine *e)
    h1_conn *h1_engine_add(h1_engine *e, int fd, void *user, const h1_conn_opts *o)
    int h1_engine_run(h1_engine *e, h1_event *out, int max, int *more)
    int h1_engine_expire(h1_engine *e, uint64_t now_ms)
    uint64_t h1_engine_next_deadline(const h1_engine *e)
    uint64_t h1_engine_now(const h1_engine *e)
    void h1_engine_drain(h1_engine *e)
    void h1_engine_close_conn(h1_engine *e, h1_conn *c)
    unsigned h1_engine_count(const h1_engine *e)
    void h1_engine_get_stats(const h1_engine *e, h1_stats *st)
    int64_t h1_engine_series_slot(h1_engine *e, uint64_t key)
    unsigned h1_engine_records(h1_engine *e, h1_record **out, unsigned max)
    void h1_engine_records_release(h1_engine *e, h1_record **recs, unsigned n)
    void h1_engine_free(h1_engine *e)
