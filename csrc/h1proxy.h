/* h1proxy.h - the worker's HTTP/1.1 proxy, driven from C through one epoll set.
 *
 * Why C: the per-request path (read, parse, route, rewrite, write, and the
 * same back) must cost a few microseconds of CPU to beat nginx per
 * CPU-second. Python runs once per batch of ready connections (the event
 * loop watches h1_engine_fd()), once per request for the route decision
 * (h1_route_fn: a handful of dict lookups), and once when a connection ends.
 *
 * Model. A downstream connection (h1_conn) carries requests one at a time:
 *
 *   [DETECT] -> READ_HEAD -> route -> (local response | upstream exchange)
 *            -> [next request | close | tunnel]
 *
 * DETECT (optional, h1_conn_opts.detect): the first bytes are examined with
 * recv(MSG_PEEK) and fp_detect() (detect.h), nothing is consumed. HTTP/1 goes
 * on; anything else (HTTP/2, TLS, opaque, or nothing within detect_ms) is
 * handed back to the caller as H1_EV_DETACH with the fd untouched, so that
 * the caller relays it as TCP with every byte still in the socket.
 *
 * READ_HEAD: bytes are read into the connection's buffer and parsed with
 * http1_parse_request (resumable); framing from http1_request_framing. A
 * parse or framing error is answered locally with the parser's status and
 * reason (400, 413, 414, 431, 501, 505), `Connection: close`, and the
 * connection is closed after the write (no byte after the bad head is read
 * or forwarded).
 *
 * Route: route_fn fills an h1_route (below). H1_ACT_RESPOND writes a local
 * response (direct response, redirect, 404 NR, ...). H1_ACT_PROXY names the
 * upstream endpoint; the engine takes an idle connection to that endpoint
 * from its pool (per engine, keyed by endpoint address + source address) or
 * connects a new one, writes the rewritten head (rw_request with the route's
 * req_ops), then streams the request body:
 *   - Content-Length: exactly that many bytes, copied as they arrive;
 *   - chunked: decoded with http1_chunked_decode and RE-FRAMED (own size
 *     lines, no extensions, no trailers), so the upstream never sees bytes
 *     it could parse differently from us;
 *   - none: nothing. Bytes after the head are the next (pipelined) request:
 *     they stay in the buffer and are parsed only after this exchange ends.
 * The response head is parsed (http1_parse_response, http1_response_framing
 * with HEAD/CONNECT from the request), rewritten (rw_response with the
 * route's resp_ops) and written; 1xx heads (100 Continue, 103) are
 * forwarded as they come and the final head is parsed after them; the
 * response body streams back by its framing (chunked re-framed, until-close
 * bodies end the downstream connection after them).
 *
 * Never buffered whole: each direction moves through a bounded buffer; when
 * the receiver does not take bytes, the sender is not read (backpressure).
 * Memory per idle keep-alive connection: the struct only (buffers are taken
 * from a per-engine free list when a request starts and given back when the
 * connection goes idle with nothing buffered).
 *
 * After the exchange: the upstream connection returns to the pool when both
 * messages ended cleanly and both allow persistence (else it is closed); the
 * downstream connection reads the next request when the request and the
 * response allow keep-alive (HTTP/1.0 with keep-alive included), else it is
 * closed once the response is written.
 *
 * Upstream failures and their answers (plain-text body, the flag is counted
 * and reported in h1_event.flags):
 *   connect refused/unreachable/reset, or connect timeout  -> 503, flag UF
 *   no complete response head within route.timeout_ms       -> 504, flag UT
 *   EOF or reset before any response byte                   -> 503, flag UC
 *   EOF or reset after response bytes were sent downstream   -> the downstream
 *                                                              connection is
 *                                                              reset, flag UC
 *   an invalid response head or framing                     -> 502
 * The keep-alive race: when a REUSED pooled connection fails (write error,
 * EOF or reset) before any response byte arrived, every byte of the
 * request sent on it is still held (the head and the whole body fit in the
 * buffer, which is kept until the response head arrives), and the request
 * is safe to send twice (an idempotent method, or the route's retry policy
 * allows non-idempotent ones), the request is sent again on a fresh
 * connection: the client never sees that race.
 * Idle pooled connections stay registered: an EOF or reset on one removes it
 * from the pool at once.
 *
 * Upgrade and CONNECT: a request with a valid Upgrade is forwarded with
 * RW_CONN_UPGRADE; on a 101 response (or a 2xx to CONNECT) the head is
 * forwarded, every byte already read beyond either head is written to the
 * other side, and then both sockets are handed back (H1_EV_DETACH with
 * H1_DETACH_TUNNEL and both fds) for the splice relay. Until the flush is
 * done the engine copies in both directions itself.
 *
 * Timers: deadlines are kept in milliseconds of CLOCK_MONOTONIC and checked
 * by h1_engine_expire(), which the worker calls from its tick; precision is
 * the tick's.
 *
 * Counters: the engine adds directly to the worker's counter region (an
 * array of uint64_t, written only by this process), at the listener and
 * cluster blocks given per connection and per route, using the offsets
 * below (kept in step with fastproxy/stats/names.py by a test).
 *
 * Edge-triggered epoll, each socket registered once (EPOLLIN|EPOLLOUT|
 * EPOLLRDHUP|EPOLLET) and removed by close() or, on detach, EPOLL_CTL_DEL.
 * A read returning fewer bytes than asked need not be repeated unless the
 * event carried EPOLLRDHUP, EPOLLHUP or EPOLLERR (then read to EOF or
 * EAGAIN): any byte or FIN arriving after the read raises a new edge.
 * Single-threaded: one engine per event loop, no locking. SIGPIPE must be
 * ignored by the process (CPython does); writes use send(MSG_NOSIGNAL).
 */
#ifndef FASTPROXY_H1PROXY_H
#define FASTPROXY_H1PROXY_H

#include <stddef.h>
#include <stdint.h>

#include "govern.h"
#include "http1.h"
#include "rewrite.h"
#include "sockops.h"

/* Counter offsets inside a listener block (see stats/names.py). */
#define H1_L_RX_BYTES        2   /* bytes read from the client */
#define H1_L_TX_BYTES        3   /* bytes written to the client */
#define H1_L_DETECT_HTTP1    6
#define H1_L_DETECT_HTTP2    7
#define H1_L_DETECT_TLS      8
#define H1_L_DETECT_OPAQUE   9   /* not HTTP, TLS or HTTP/2 */
#define H1_L_DETECT_TIMEOUT 10   /* the client sent nothing within detect_ms */
#define H1_L_RQ_1XX         11   /* downstream responses by class: 11..15 = 1xx..5xx */
/* Counter offsets inside a cluster block. */
#define H1_C_CX_TOTAL        0   /* upstream connections opened */
#define H1_C_CX_DESTROY      1   /* upstream connections closed */
#define H1_C_RX_BYTES        2   /* bytes read from upstreams */
#define H1_C_TX_BYTES        3   /* bytes written to upstreams */
#define H1_C_CONNECT_FAIL    4   /* connects that failed or timed out */
#define H1_C_CONNECT_TIMEOUT 5
#define H1_C_RQ_TOTAL        6   /* requests sent upstream (a replay counts once) */
#define H1_C_RQ_1XX          7   /* upstream responses by class: 7..11 = 1xx..5xx */
#define H1_C_RQ_TIMEOUT     12   /* 504 UT */
#define H1_C_RQ_RESET       13   /* UC: the upstream closed or reset mid-exchange */
#define H1_C_POOL_REUSED    14   /* requests sent on a pooled connection */
#define H1_C_KA_RACE        15   /* requests replayed after the keep-alive race */

/* Response flags (Envoy's letters), a bit set in h1_event.flags. */
#define H1_F_UF 0x01   /* upstream connect failure */
#define H1_F_UT 0x02   /* upstream request timeout */
#define H1_F_UC 0x04   /* upstream connection termination */
#define H1_F_NR 0x08   /* no route (set by the route callback) */
#define H1_F_DC 0x10   /* downstream connection termination mid-exchange */
#define H1_F_DPE 0x20  /* downstream protocol error (a local 4xx/5xx for bad input) */
#define H1_F_UPE 0x40  /* upstream protocol error (502) */
#define H1_F_UO 0x80   /* upstream overflow: a circuit breaker refused (503) */
#define H1_F_UH 0x100  /* no healthy upstream (set by the route callback) */
#define H1_F_RL 0x200  /* rate limited (set by the route callback) */
#define H1_F_FI 0x400  /* fault injection: aborted (set by the route callback) */
#define H1_F_DI 0x800  /* fault injection: delayed (h1_route.delay_ms) */
#define H1_F_URX 0x1000 /* the retry limit was reached (the last try's failure is answered) */
#define H1_F_SI 0x2000 /* stream idle timeout (h1_route.idle_timeout_ms) */

/* ---- Observability (obs-spec.md §1-4) -----------------------------------------
 *
 * Series. The top of the counter region (from h1_config.series_base) holds up
 * to series_max series of H1_SERIES_SLOTS slots; series i is at series_base +
 * i * H1_SERIES_SLOTS and is allocated in order on the first use of its KEY.
 * Slot 0 of a series is its KEY (0: unused), written LAST with a release
 * store after the other slots were zeroed, so a reader that sees KEY != 0
 * sees a valid series. Every other slot is a plain single-writer counter.
 * Each finished HTTP request (see "Request end" below) adds to the series of
 * H1_KEY_HTTP(listener, cluster, flags, status): requests, the duration and
 * body-size histograms (NON-cumulative buckets; a value lands in the first
 * bucket whose bound is >= it) and their sums. A new KEY past series_max is
 * not recorded: worker slot H1_G_SERIES_OVERFLOW is incremented instead.
 * h1_engine_new ADOPTS the series already in the area (a restarted worker
 * reuses its region): it scans i = 0.. while KEY != 0 and indexes them, so
 * counters stay monotonic. TCP series (H1_KEY_TCP) share the area and the
 * allocator: the worker gets their base through h1_engine_series_slot and
 * counts them itself (the relay's third counter pointers, relay.h). */
#define H1_SERIES_SLOTS      48
#define H1_S_KEY              0
#define H1_S_REQUESTS         1
#define H1_S_DURATION         2   /* 20 buckets, bounds H1_DURATION_BOUNDS_US */
#define H1_S_DURATION_SUM    22   /* microseconds */
#define H1_S_REQUEST_BYTES   23   /* 9 buckets, bounds 1, 10, ... 10^7, +Inf */
#define H1_S_REQUEST_SUM     32
#define H1_S_RESPONSE_BYTES  33   /* 9 buckets, as request bytes */
#define H1_S_RESPONSE_SUM    42
#define H1_S_TCP_OPENED       1   /* TCP series: counted by the worker */
#define H1_S_TCP_CLOSED       2
#define H1_S_TCP_RX           3   /* bytes received from downstream (relay dir 0, ctr[2]) */
#define H1_S_TCP_TX           4   /* bytes sent to downstream (relay dir 1, ctr[2]) */
#define H1_DURATION_BUCKETS  20
#define H1_BYTES_BUCKETS      9
/* Worker-wide slots (block 0, stats/names.py G_*). */
#define H1_G_SERIES_OVERFLOW  4
#define H1_G_RECORDS_DROPPED  5

/* KEY packing: blocks are counter-block bases (multiples of 16); status is
 * the status sent to the client (0: none), flags the request's H1_F_* bits.
 * A request answered without a cluster uses cluster block 0. */
#define H1_KEY_HTTP(lb, cb, flags, status)                                                         \
    ((uint64_t)1 << 63 | (uint64_t)((lb) / 16) << 42 | (uint64_t)((cb) / 16) << 24 |             \
     (uint64_t)((flags) & 0x3fffu) << 10 | (uint64_t)((status) & 0x3ffu))
#define H1_KEY_TCP(lb, cb) \
    ((uint64_t)1 << 63 | (uint64_t)1 << 62 | (uint64_t)((lb) / 16) << 42 | (uint64_t)((cb) / 16) << 24)

/* Request end. A request is finished, and recorded (series and record),
 * once: when its response was written whole (proxied or local, the tunnel's
 * 101 / 2xx-to-CONNECT head included, at the hand-back), or when the
 * connection ends with it unfinished (status: the final status already
 * queued to the client, else 0). Duration: from the head complete (or the
 * parse error) to then. Body bytes: request body bytes read from the client
 * and queued upstream (chunked: decoded payload), response body bytes queued
 * to the client (a local response: its body length). */

/* Request records (h1_config.records): one per finished request, kept in a
 * set of records_cap structs allocated at h1_engine_new. A request takes a
 * free struct when it starts (the strings of its head are copied there, cut
 * to the sizes below) and queues it when it ends; the caller takes queued
 * ones with h1_engine_records and gives them back with
 * h1_engine_records_release. A request that finds no free struct is not
 * recorded and counted in H1_G_RECORDS_DROPPED. */
#define H1_REC_METHOD     24
#define H1_REC_PATH      512
#define H1_REC_AUTHORITY 256
#define H1_REC_UA        256
#define H1_REC_RID        64
#define H1_REC_ADDR       48   /* "ip:port", "[v6]:port" */
#define H1_REC_ROUTE      96   /* the route's name (h1_route.name) */

typedef struct h1_record {
    uint64_t start_us;            /* CLOCK_REALTIME microseconds at the head complete */
    uint64_t duration_us;         /* to the last response byte written */
    uint64_t upstream_us;         /* request fully sent -> response head; 0: no upstream */
    uint64_t bytes_received;      /* request body bytes */
    uint64_t bytes_sent;          /* response body bytes */
    uint32_t status;              /* sent to the client, 0: none */
    uint32_t flags;               /* H1_F_* */
    uint32_t cluster_block, listener_block;
    uint8_t minor;                /* HTTP/1.<minor> of the request */
    uint8_t traced;               /* trace_id/span_id are set (tracing on) */
    uint8_t has_parent;
    uint8_t sampled;
    uint8_t trace_id[16], span_id[8], parent_id[8];
    uint16_t method_len, path_len, authority_len, ua_len, rid_len, upstream_len, peer_len, odst_len, route_len;
    char method[H1_REC_METHOD];
    char path[H1_REC_PATH];
    char authority[H1_REC_AUTHORITY];
    char ua[H1_REC_UA];
    char rid[H1_REC_RID];         /* x-request-id as forwarded (received or generated) */
    char upstream[H1_REC_ADDR];   /* the endpoint, "" when none */
    char peer[H1_REC_ADDR];       /* the client */
    char odst[H1_REC_ADDR];       /* the original destination, "" when none */
    char route[H1_REC_ROUTE];     /* the decision's name (h1_route.name), "" when none */
    struct h1_record *next;       /* engine-internal */
} h1_record;

/* Trace context (h1_config.tracing), per proxied request, in the forwarded
 * head. Incoming context, first valid wins:
 *   traceparent 00-<32 hex trace>-<16 hex span>-<2 hex flags> (trace and span
 *     not all zero): trace kept, parent = its span, sampled = flags & 1;
 *   B3 multi x-b3-traceid (16/32 hex), x-b3-spanid (16 hex), sampled from
 *     x-b3-sampled (1/true/0/false) or x-b3-flags: 1 (debug);
 *   B3 single b3: {trace}-{span}[-{sampled 0/1/d}[-{parent}]].
 * A new span id (8 random bytes from the engine's PRNG) replaces the span of
 * every family present, each family keeping its own trace id text:
 *   traceparent: 00-<trace>-<new span>-<flags as received>  (tracestate as is)
 *   x-b3-spanid: <new span>, x-b3-parentspanid: <incoming x-b3-spanid>,
 *     x-b3-sampled set to the decision when the request carried no sampling
 *   b3: {trace}-{new span}-{sampled}-{incoming span}
 * No valid context: a new trace (16 random bytes), sampled when a draw falls
 * under trace_sampling percent, and traceparent plus x-b3-traceid,
 * x-b3-spanid and x-b3-sampled are added. When B3 carries no sampling
 * decision the same draw decides it. The fields are written as set
 * operations merged with the route's (rw_ops): a route operation naming the
 * same field wins and the engine's is dropped. 16-hex B3 trace ids are
 * left-padded with zeros to 32 in the record. */

/* h1_route.action */
#define H1_ACT_PROXY   1
#define H1_ACT_RESPOND 2

/* The decision for one request, filled by the route callback. Pointers must
 * stay valid until the engine calls release(ref) (the request ended). */
typedef struct h1_route {
    int action;                 /* H1_ACT_* */
    uint32_t flags;             /* H1_F_* the decision itself carries (NR) */
    /* H1_ACT_PROXY */
    fp_addr upstream;           /* the endpoint */
    fp_addr source;             /* bind to this source first; family 0 = none */
    uint32_t cluster_block;     /* counter block of the cluster */
    uint32_t connect_timeout_ms;
    uint32_t timeout_ms;        /* total: routed -> a final response head, across retries; 0 = none */
    const rw_ops *req_ops;      /* may be NULL */
    const rw_ops *resp_ops;     /* may be NULL */
    /* H1_ACT_RESPOND: the engine writes
     *   "HTTP/1.1 " status " " reason CRLF  headers  "content-length: " len CRLF
     *   ["connection: close" CRLF] CRLF body
     * (no body for HEAD). headers: complete field lines, may be empty. */
    int status;
    rw_str reason;
    rw_str headers;
    rw_str body;
    rw_str name;                /* the route's name, for the request record; may be empty */
    void *ref;                  /* handed to release() when the request ends; may be NULL */
    /* Governance (H1_ACT_PROXY; all NULL / 0: none). See "Governance" below. */
    gv_cluster *gcl;            /* the cluster's shared state (breakers, outlier) */
    const gv_cluster_cfg *gcfg; /* its limits (required with gcl) */
    gv_endpoint *gep;           /* the endpoint's shared state; NULL: not tracked */
    uint32_t ep_slot;           /* the endpoint's slot (retries avoid tried slots) */
    const gv_retry *retry;      /* NULL: no retries */
    uint32_t idle_timeout_ms;   /* no byte either way for this long: 408 before the response head,
                                   a reset after it (flag SI); 0 = none */
    uint32_t delay_ms;          /* fault injection: wait this long before proxying, or before the local
                                   response of H1_ACT_RESPOND (flag DI) */
    /* Local rate limits (any action), checked in order before anything else:
     * a bucket without a token answers 429 with `x-envoy-ratelimited: true`
     * (flag RL). limits[i].b NULL: none. */
    gv_limit limits[2];
} h1_route;

/* Returns 0 with *out filled, or -1 (the callback failed: the engine answers
 * 500 and closes the connection). buf/p/f: the parsed request head (as in
 * http1.h, offsets into buf). conn_user: the connection's user pointer. */
typedef int (*h1_route_fn)(void *cb_data, void *conn_user, const char *buf,
                           const http1_parser *p, const http1_framing *f, h1_route *out);
typedef void (*h1_release_fn)(void *cb_data, void *ref);
/* Another endpoint for a retry of the request whose decision is ref: fills
 * *out (H1_ACT_PROXY, same cluster, preferably an endpoint whose slot is not
 * in tried[0..ntried)) and returns 0, or -1 (no retry: the failure stands).
 * The engine releases ref and keeps out->ref in its place. */
typedef int (*h1_retry_fn)(void *cb_data, void *conn_user, void *ref, const uint32_t *tried, unsigned ntried,
                           h1_route *out);

/* Governance (h1_route.gcl / retry / idle_timeout_ms / delay_ms).
 *
 * Circuit breakers (govern.h), shared by every worker: a proxied request
 * holds gv_rq_acquire from its first attempt to its end; refused -> 503 UO
 * with `x-fastproxy-overloaded: true`, nothing sent upstream. A new upstream
 * connection holds gv_cx_acquire while open; at max_connections the request
 * waits (gv_pending_acquire; refused -> 503 UO) until a connection of the
 * engine closes or the next h1_engine_expire, then tries again (an idle
 * connection of the engine to another endpoint of the cluster is closed to
 * make room); the route timeout, when set, bounds the wait (504 UT). Each
 * attempt counts in the endpoint's rq_active and rq_total, and its outcome
 * goes to gv_outlier_report.
 *
 * Retries (route.retry): an attempt that ends before any response byte went
 * downstream with an outcome retry_on covers (gv_retry_wanted) is retried
 * when (1) retries are left, (2) the request is whole in R (it fit the
 * buffer: the replay buffer is the request buffer) and no interim response
 * was forwarded, (3) it is safe: the upstream never got it (connect
 * failure), the method is idempotent, or retry->non_idempotent, and (4)
 * gv_retry_acquire allows it (max_retries, budget). The failed upstream
 * connection is closed (a 5xx response's body is not read), the retry
 * callback names another endpoint, and the request is sent again after
 * gv_backoff_ms. Retries exhausted while the outcome was retriable: flag URX.
 * Timeouts: route.timeout_ms is the total, from the request's routing to a
 * response head, across connects, waits, retries and backoffs; retry->
 * per_try_timeout_ms bounds each attempt from its request sent (its expiry
 * is outcome TIMEOUT). Either answers 504 UT when nothing is left to try. */

typedef struct h1_config {
    http1_limits limits;          /* request and response heads */
    uint32_t buffer_bytes;        /* per direction; >= limits.max_head_bytes + 1024 (raised to it) */
    uint32_t pool_max_idle;       /* idle upstream connections kept per endpoint (0: no pooling) */
    uint32_t pool_idle_ms;        /* an idle pooled connection is closed after this */
    uint32_t client_idle_ms;      /* a downstream connection between requests; 0 = never */
    uint64_t *counters;           /* the worker's counter region (slot i = counters[i]) */
    uint32_t counters_len;        /* slots in it; offsets past it are not written */
    h1_route_fn route;
    h1_release_fn release;
    h1_retry_fn retry;            /* NULL: no retries */
    void *gv_base;                /* the governance segment (govern.h), for the ledger */
    int64_t *gv_ledger;           /* this worker's ledger (gv_ledger_slots(gv_base) slots); NULL: none */
    void *cb_data;
    /* Observability (see above); all zero = off, and then a request costs
     * one branch more than without it. */
    uint32_t series_base;         /* first slot of the series area */
    uint32_t series_max;          /* series that fit (0: none); clamped to the region */
    int records;                  /* 1: keep request records */
    uint32_t records_cap;         /* records (default 4096 when 0) */
    int tracing;                  /* 1: trace context in forwarded heads (and records) */
    double trace_sampling;        /* percent of new traces sampled, 0..100 */
} h1_config;

/* Per-connection options, copied by h1_engine_add (the strings too: they
 * need not outlive the call). */
typedef struct h1_conn_opts {
    int detect;                   /* 1: DETECT first */
    uint32_t detect_ms;           /* DETECT gives up after this (H1_DETACH_TIMEOUT) */
    uint32_t listener_block;      /* counter block of the listener */
    rw_str peer;                  /* client address text for x-forwarded-for ("" = none) */
    rw_str proto;                 /* x-forwarded-proto value ("" = leave) */
    rw_str default_host;          /* Host for HTTP/1.0 requests without one (the original destination) */
    int request_id;               /* 1: add x-request-id when absent */
    uint32_t headers_timeout_ms;  /* first byte of a request head -> its end; then 408 and close.
                                     0 = none */
    /* For records only (ignored without h1_config.records): the client's
     * "ip:port" (empty: getpeername() at add) and the original destination
     * "ip:port" (empty: none). */
    rw_str peer_addr;
    rw_str original_dst;
} h1_conn_opts;

typedef struct h1_engine h1_engine;
typedef struct h1_conn h1_conn;

/* h1_event.kind */
#define H1_EV_CLOSED 1   /* the connection ended; its socket is closed */
#define H1_EV_DETACH 2   /* the connection is handed back: see detach and fds */

/* h1_event.detach */
#define H1_DETACH_HTTP2   1  /* DETECT saw the HTTP/2 preface */
#define H1_DETACH_TLS     2  /* DETECT saw a TLS ClientHello */
#define H1_DETACH_OPAQUE  3  /* DETECT saw something else */
#define H1_DETACH_TIMEOUT 4  /* DETECT saw nothing within detect_ms */
#define H1_DETACH_TUNNEL  5  /* upgraded (101) or CONNECT'ed: fd and upstream_fd */

typedef struct h1_event {
    int kind;
    int detach;                  /* H1_DETACH_* (H1_EV_DETACH) */
    void *user;                  /* the connection's user pointer */
    int fd;                      /* DETACH: the downstream socket, now the caller's */
    int upstream_fd;             /* TUNNEL: the upstream socket, now the caller's; else -1 */
    uint32_t cluster_block;      /* TUNNEL: the route's cluster block */
    uint64_t requests;           /* requests this connection carried */
    uint32_t flags;              /* H1_F_* seen on this connection (OR of its requests') */
} h1_event;

/* Stats since h1_engine_new (tests and metrics). */
typedef struct h1_stats {
    uint64_t runs, events, requests, local_responses;
    uint64_t upstream_connects, pool_reuses, pool_evictions, ka_replays, retries;
    unsigned conns, upstream_open, upstream_idle, buffers_free, buffers_total;
} h1_stats;

/* NULL with errno on failure. *cfg is copied. */
h1_engine *h1_engine_new(const h1_config *cfg);
int h1_engine_fd(const h1_engine *e);

/* Takes ownership of a connected non-blocking TCP socket (the client side).
 * Returns the connection (valid until reported by h1_engine_run or closed
 * by h1_engine_close_conn), or NULL with errno (the caller keeps fd). Bytes
 * already waiting are served by the next run. */
h1_conn *h1_engine_add(h1_engine *e, int fd, void *user, const h1_conn_opts *o);

/* Collects ready events (epoll_wait timeout 0, batches of 256), serves the
 * affected connections, and writes up to max events into out[] (oldest
 * first; the rest stay queued). Returns their count or -errno. *more = 1
 * when queued events or unfinished work remain that no epoll edge will
 * announce: call again soon. */
int h1_engine_run(h1_engine *e, h1_event *out, int max, int *more);

/* Fires deadlines that passed (detect, connect, response timeout, client
 * idle, pool idle) at now_ms (CLOCK_MONOTONIC milliseconds; 0 = read the
 * clock). Events it causes are reported by the next h1_engine_run; returns
 * 1 when there are such events. */
int h1_engine_expire(h1_engine *e, uint64_t now_ms);

/* The earliest armed deadline (CLOCK_MONOTONIC ms), 0 when none: the
 * caller wakes for it when it is sooner than its tick. */
uint64_t h1_engine_next_deadline(const h1_engine *e);
/* The engine's clock (CLOCK_MONOTONIC ms), as of its last run or expire. */
uint64_t h1_engine_now(const h1_engine *e);

/* Drain: connections between requests are closed now, the others after
 * their current response (Connection: close is added to it). */
void h1_engine_drain(h1_engine *e);

/* Aborts one connection now (RST), with its upstream; reported by no run.
 * Its route ref, if any, is handed to release(). Also withdraws the report
 * of a connection that ended but was not handed out yet. */
void h1_engine_close_conn(h1_engine *e, h1_conn *c);

/* The base slot of the series of key (allocated on first use: the other
 * slots zeroed, then KEY stored with release order), or -1 when key is new
 * and every series is taken (H1_G_SERIES_OVERFLOW is then incremented), or
 * when there is no series area or key is 0. */
int64_t h1_engine_series_slot(h1_engine *e, uint64_t key);

/* Takes up to max queued records, oldest first, into out; returns their
 * count. They stay valid and unchanged until given back with
 * h1_engine_records_release (every taken record must be given back before
 * h1_engine_free, or with it: free releases the storage). */
unsigned h1_engine_records(h1_engine *e, h1_record **out, unsigned max);
void h1_engine_records_release(h1_engine *e, h1_record **recs, unsigned n);

unsigned h1_engine_count(const h1_engine *e);   /* connections not yet reported */
void h1_engine_get_stats(const h1_engine *e, h1_stats *st);

/* Aborts every connection, closes pooled ones and the epoll fd. Connections
 * still registered are not reported; user pointers are released through
 * nothing: the caller forgets them. Route refs still held are handed to
 * release() (as by h1_engine_close_conn). */
void h1_engine_free(h1_engine *e);

#endif /* FASTPROXY_H1PROXY_H */
