/* h1proxy.c - the per-worker HTTP/1.1 proxy engine (contract: h1proxy.h).
 *
 * Shape of the code, top to bottom:
 *   utilities        clock, counters, the request-id PRNG
 *   buffers          h1_buf: one allocation holding a data area, the head
 *                    parser + framing + chunk decoder of the message that
 *                    lives in it, its header array, and the output queue of
 *                    the direction it feeds. Active exchanges hold two (R:
 *                    client bytes + the queue towards the upstream; W:
 *                    upstream bytes + the queue towards the client); idle
 *                    keep-alive connections hold none.
 *   timers           one list per kind, sorted by deadline
 *   events, objects  reported events, conn/up recycling
 *   upstreams, pools
 *   output queues    iovec lists written with sendmsg(MSG_NOSIGNAL)
 *   the state machine, per connection mode:
 *                    DETECT -> HEAD -> PROXY | LOCAL -> HEAD ... | LINGER | TUNNEL
 *   the public API
 *
 * Readiness. Each socket carries sticky flags (sockst): rd/wr are set by
 * epoll edges and cleared when a read or write proves the socket empty or
 * full (EAGAIN, or a short read/partial write: under EPOLLET a later byte or
 * freed space raises a new edge). The state machine then acts on the flags,
 * not on the events, so it never issues a syscall that is known to fail and
 * never waits for an edge that will not come. A short read is not proof of
 * emptiness once RDHUP/HUP/ERR was seen (the FIN or error behind the data
 * raises no further edge): then `hup` keeps rd set until EOF or EAGAIN.
 *
 * Buffers and positions. R holds [r_start, r_len): r_start is the current
 * request's head (its parse spans are relative to it), r_pos the first byte
 * not yet queued towards the upstream. While a request may still need to be
 * replayed (`hold`), nothing from r_start on is discarded; otherwise bytes
 * before r_pos are. W holds the rewritten request head at [0, w_start) until
 * it is sent, then the response from w_start (head) and w_pos (body).
 * Buffers are moved (memmove) only when full and only while no queued iovec
 * points into them; a queue is filled only when empty (plus the head that
 * opened it), so reading never overwrites queued bytes.
 *
 * Lifetime. Objects (conns, upstreams) that end during a run are parked on
 * a zombie list and recycled only when the run is over: an event collected
 * in the same epoll batch may still name them. A conn whose end is reported
 * stays out of recycling until the event is handed out.
 */
#define _GNU_SOURCE
#include "h1proxy.h"

#include "detect.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
/* Chunk-data spans re-framed per write: each costs 3 iovecs. */
#define TXQ_SPANS 32
#define TXQ_IOV (3 * TXQ_SPANS + 4)
/* A connection moves at most this much per run before yielding (the rest
 * goes on the pending list and *more is set): one fast transfer cannot
 * starve the others nor the worker's event loop. */
#define STEP_BYTES (512u << 10)
#define STEP_ROUNDS 64
/* After a final response on a closing connection: shutdown(SHUT_WR), then
 * read and discard until the client's EOF for at most this long, so that
 * unread client bytes do not turn our close into a RST that destroys the
 * response in the client's receive queue. */
#define LINGER_MS 2000
/* While a response head is awaited, upstream reads are at most this big:
 * the rewritten head is written behind the bytes read, in the same buffer,
 * and this keeps room for it (else a spare buffer is borrowed). */
#define HEAD_READ (16u << 10)
#define DEFAULT_BUFFER (64u << 10)
#define FREE_BUFS_MAX 128
#define FREE_OBJS_MAX 1024

enum { M_DETECT = 1, M_HEAD, M_PROXY, M_LOCAL, M_TUNNEL, M_LINGER, M_WAIT, M_DEAD };
/* M_WAIT: a routed request not yet sent, waiting for (h1_conn.wait) */
enum { W_DELAY = 1, W_BACKOFF, W_CONN };
enum { RQ_SEND = 1, RQ_DONE };
enum { RS_HEAD = 1, RS_BODY, RS_DONE };
enum { T_DETECT, T_IDLE, T_RESP, T_LINGER, T_CONNECT, T_POOL, T_WAIT, T_HDRS, T_STREAM, T_KINDS };

#define IO_AGAIN (-1)
#define IO_ERR (-2)

#define TAG_UP ((uintptr_t)1)

static const char CRLF[2] = { '\r', '\n' };
static const char LAST_CHUNK[5] = { '0', '\r', '\n', '\r', '\n' };
static const char TE_CHUNKED[] = "Transfer-Encoding: chunked\r\n";

/* ---- types ------------------------------------------------------------------ */

typedef struct sockst {
    uint8_t rd, wr;   /* readable / writable as far as we know */
    uint8_t hup;      /* RDHUP, HUP or ERR seen: short reads prove nothing */
    uint8_t err;      /* EPOLLERR or EPOLLHUP seen */
} sockst;

typedef struct h1_timer {
    struct h1_timer *prev, *next;
    uint64_t at;
    int kind;         /* T_*, or -1 when not armed */
} h1_timer;

typedef struct tlist {
    h1_timer *head, *tail;
} tlist;

typedef struct txq {
    struct iovec iov[TXQ_IOV];
    unsigned n, i, nsl;
    char sl[TXQ_SPANS][20];   /* chunk size lines */
} txq;

typedef struct h1_buf {
    struct h1_buf *next;      /* free list */
    txq q;
    http1_parser p;
    http1_framing f;
    http1_chunked ck;
    uint8_t rid[16];          /* R: the request id, kept for a replay */
    char *data;
} h1_buf;

typedef struct h1_pool h1_pool;

/* Trace context of one request (tracing on): what came in, per family, and
 * the ids of our span. Hex texts are kept as received (lower-cased when
 * checked) so each family is forwarded with its own trace id text. */
#define TR_W3C 0x1   /* a valid traceparent came in */
#define TR_B3M 0x2   /* valid B3 multi headers came in */
#define TR_B3S 0x4   /* a valid b3 single header came in */
#define TR_NEW 0x8   /* none: a trace starts here */

typedef struct h1_trace {
    uint8_t fam;                  /* TR_* */
    uint8_t sampled, has_parent;
    uint8_t b3m_sampled_given;    /* x-b3-sampled or x-b3-flags came in */
    char b3s_sampled;             /* b3 single's sampling char, 0 if none */
    uint8_t b3m_tid_len, b3s_tid_len;
    uint8_t trace[16], span[8], parent[8];
    char tp_trace[32], tp_flags[2];
    char b3m_tid[32], b3m_span[16];
    char b3s_tid[32], b3s_span[16];
} h1_trace;

typedef struct h1_up {
    int fd;
    sockst s;
    uint8_t connecting, reused, idle, dead;
    h1_conn *owner;
    h1_pool *pool;
    struct h1_up *pnext, *pprev;   /* the pool's idle list */
    struct h1_up *znext;           /* zombie / free list */
    h1_timer t;
    uint32_t block;
    gv_cluster *gcl;               /* holds a gv_cx_acquire on it; NULL: none */
} h1_up;

struct h1_pool {
    h1_pool *hnext;
    fp_addr dst, src;
    h1_up *idle;                   /* most recently used first */
    unsigned nidle;
};

struct h1_conn {
    int fd;
    uint8_t mode, rq, rs;
    sockst s;
    uint8_t inwork, pending, queued_ev;
    /* the request */
    uint8_t minor, is_head, is_connect, upgrade, client_ka;
    uint8_t rq_end;           /* the whole request body is queued */
    uint8_t rq_broken;        /* the upstream stopped taking the request */
    uint8_t hold;             /* R keeps the whole request: replayable */
    uint8_t replayed, routed;
    /* the response */
    uint8_t rs_end, resp_byte, client_close, dechunk, dq_x, uq_w, close_after;
    int rq_body, rs_body;
    void *user;
    h1_buf *r, *w, *x;
    uint32_t r_start, r_pos, r_len, head_len;
    uint32_t w_start, w_pos, w_len;
    uint64_t rq_left, rs_left;
    h1_up *up;
    h1_route route;
    /* options */
    uint8_t detect, request_id;
    uint32_t detect_ms, listener_block, headers_timeout_ms;
    int peeked;
    rw_str peer, proto, default_host;
    char *strs_heap;
    char strs[160];
    h1_timer t;
    h1_conn *wnext;                 /* this run's work list */
    h1_conn *pnext, *pprev;         /* pending list */
    h1_conn *anext, *aprev;         /* every live connection */
    h1_conn *znext;                 /* zombie / free list */
    uint64_t requests;
    uint32_t flags;
    /* observability of the current request (h1_config series/records/tracing) */
    uint8_t rq_live;                /* a request is measured: ends in obs_end */
    int status_sent;                /* final status queued to the client, 0: none */
    uint32_t rflags;                /* H1_F_* of this request */
    uint64_t rq_bytes, rs_bytes;    /* body bytes */
    uint64_t t0_us, t_sent_us, upstream_us;
    h1_record *rec;                 /* NULL: not recorded */
    h1_trace *tr;                   /* NULL: tracing off (else tr_store) */
    rw_str peer_addr, odst;         /* records: "ip:port" */
    h1_trace tr_store;
    /* governance of the current request (h1_route.gcl, retry, ...) */
    uint8_t gv_rq;                  /* holds gv_rq_acquire */
    uint8_t gv_ep;                  /* the live attempt counts in gep->rq_active */
    uint8_t gv_retry;               /* holds gv_retry_acquire (the live attempt is a retry) */
    uint8_t gv_pending;             /* holds gv_pending_acquire (waiting for a connection) */
    uint8_t gv_reported;            /* the live attempt's outcome went to the outlier detector */
    uint8_t wait, delayed, idempotent, ntried, resp_fwd;
    uint32_t retries;               /* retries of this request so far */
    uint32_t tried[4];              /* endpoint slots tried (retries avoid them) */
    uint64_t deadline;              /* the total timeout's end (ms), 0: not started / none */
    uint64_t last_io;               /* e->now when a byte last moved (idle timeout) */
    h1_timer t2;                    /* T_STREAM (idle timeout) */
    h1_conn *cwnext, *cwprev;       /* waiting for an upstream connection (max_connections) */
};

typedef struct qev {
    h1_event ev;
    h1_conn *c;                     /* NULL: cancelled by close_conn */
} qev;

struct h1_engine {
    int epfd;
    int in_run, draining;
    h1_config cfg;
    uint32_t cap, hcap;
    size_t buf_size;
    uint64_t now;
    uint64_t rng[4];
    uint64_t step_bytes;
    h1_buf *free_bufs;
    unsigned nfree_bufs, nbufs;
    h1_conn *free_conns, *zconns;
    unsigned nfree_conns;
    h1_up *free_ups, *zups;
    unsigned nfree_ups;
    h1_conn *all;
    h1_conn *pend_head, *pend_tail;
    tlist timers[T_KINDS];
    h1_pool **pools;
    unsigned npools, pool_slots;
    qev *evq;
    unsigned evq_head, evq_len, evq_cap;
    unsigned count;
    h1_stats st;
    /* observability */
    uint8_t obs;                    /* series, records or tracing: requests are measured */
    uint64_t *series;               /* counters + series_base; NULL: no series */
    uint32_t nseries, series_max;
    uint64_t *skeys;                /* open addressing, skeys[i] = 0: empty */
    uint32_t *sidx, smask;
    h1_record *recs, *rfree, *rq_head, *rq_tail;
    uint32_t rfresh;                /* recs[rfresh..cap) never used (untouched pages) */
    uint64_t sample_thr;            /* a draw below it samples a new trace */
    uint8_t sample_all;
    /* governance */
    h1_conn *cw_head, *cw_tail;     /* waiting for a connection (max_connections) */
    uint8_t cw_kick;                /* a connection closed: the waiters may try again */
};

/* ---- utilities -------------------------------------------------------------- */

static uint64_t clock_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline void cnt(const h1_engine *e, uint32_t block, uint32_t off, uint64_t n)
{
    uint64_t i = (uint64_t)block + off;

    if (i < e->cfg.counters_len)
        e->cfg.counters[i] += n;
}

/* 1..5 for 1xx..5xx, 0 for anything else (600..999). */
static inline uint32_t status_class(int status)
{
    return status >= 100 && status < 600 ? (uint32_t)(status / 100) : 0;
}

static inline uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256**: request ids need to be unique, not secret; a getrandom()
 * per request would be a syscall on the hot path. */
static uint64_t rng_next(uint64_t s[4])
{
    uint64_t out = rotl64(s[1] * 5, 7) * 9, t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return out;
}

static void rng_seed(uint64_t s[4])
{
    uint64_t x;
    int i;

    if (getrandom(s, 4 * sizeof(uint64_t), GRND_NONBLOCK) == (ssize_t)(4 * sizeof(uint64_t)) &&
        (s[0] | s[1] | s[2] | s[3]))
        return;
    /* No entropy yet (early boot): splitmix64 over the clock and the address. */
    x = clock_ms() ^ ((uint64_t)(uintptr_t)s << 20) ^ (uint64_t)getpid();
    for (i = 0; i < 4; i++) {
        uint64_t z = (x += 0x9e3779b97f4a7c15ull);

        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        s[i] = z ^ (z >> 31);
    }
}

/* ---- observability: series, records, trace context ---------------------------- */

static uint64_t clock_us(clockid_t id)
{
    struct timespec ts;

    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Upper bounds of the duration buckets in microseconds (the last is +Inf),
 * and of the body-size buckets in bytes. */
static const uint64_t DURATION_BOUNDS_US[H1_DURATION_BUCKETS - 1] = {
    500, 1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
    10000000, 30000000, 60000000, 300000000, 600000000, 1800000000, 3600000000ull
};
static const uint64_t BYTES_BOUNDS[H1_BYTES_BUCKETS - 1] = {
    1, 10, 100, 1000, 10000, 100000, 1000000, 10000000
};

static inline unsigned bucket(const uint64_t *bounds, unsigned n, uint64_t v)
{
    unsigned i = 0;

    while (i < n && v > bounds[i])
        i++;
    return i;
}

static inline uint32_t series_hash(const h1_engine *e, uint64_t key)
{
    return (uint32_t)((key * 0x9e3779b97f4a7c15ull) >> 32) & e->smask;
}

/* The index of key's series, allocated when new; -1 past the cap. */
static int64_t series_get(h1_engine *e, uint64_t key)
{
    uint32_t h = series_hash(e, key), i, k;
    uint64_t *s;

    for (;;) {
        uint64_t q = e->skeys[h];

        if (q == key)
            return e->sidx[h];
        if (!q)
            break;
        h = (h + 1) & e->smask;
    }
    if (e->nseries >= e->series_max) {
        cnt(e, 0, H1_G_SERIES_OVERFLOW, 1);
        return -1;
    }
    i = e->nseries++;
    s = e->series + (size_t)i * H1_SERIES_SLOTS;
    for (k = 1; k < H1_SERIES_SLOTS; k++)
        s[k] = 0;
    __atomic_store_n(&s[H1_S_KEY], key, __ATOMIC_RELEASE);
    e->skeys[h] = key;
    e->sidx[h] = i;
    return i;
}

static void series_record(h1_engine *e, uint64_t key, uint64_t dur_us, uint64_t rqb, uint64_t rsb)
{
    int64_t i = series_get(e, key);
    uint64_t *s;

    if (i < 0)
        return;
    s = e->series + (size_t)i * H1_SERIES_SLOTS;
    s[H1_S_REQUESTS]++;
    s[H1_S_DURATION + bucket(DURATION_BOUNDS_US, H1_DURATION_BUCKETS - 1, dur_us)]++;
    s[H1_S_DURATION_SUM] += dur_us;
    s[H1_S_REQUEST_BYTES + bucket(BYTES_BOUNDS, H1_BYTES_BUCKETS - 1, rqb)]++;
    s[H1_S_REQUEST_SUM] += rqb;
    s[H1_S_RESPONSE_BYTES + bucket(BYTES_BOUNDS, H1_BYTES_BUCKETS - 1, rsb)]++;
    s[H1_S_RESPONSE_SUM] += rsb;
}

/* Sets up the series area (clamped to the region) and adopts the series
 * already in it. 0, or -1 (out of memory). */
static int series_init(h1_engine *e)
{
    uint32_t n = e->cfg.series_max, size = 2, i;

    if (!n || e->cfg.series_base >= e->cfg.counters_len)
        return 0;
    if (n > (e->cfg.counters_len - e->cfg.series_base) / H1_SERIES_SLOTS)
        n = (e->cfg.counters_len - e->cfg.series_base) / H1_SERIES_SLOTS;
    if (!n || n > (1u << 24))
        return n ? (errno = EINVAL, -1) : 0;
    while (size < 2 * n)
        size <<= 1;
    e->skeys = calloc(size, sizeof(*e->skeys));
    e->sidx = calloc(size, sizeof(*e->sidx));
    if (!e->skeys || !e->sidx)
        return -1;
    e->smask = size - 1;
    e->series_max = n;
    e->series = e->cfg.counters + e->cfg.series_base;
    for (i = 0; i < n; i++) {
        uint64_t key = __atomic_load_n(&e->series[(size_t)i * H1_SERIES_SLOTS], __ATOMIC_ACQUIRE);
        uint32_t h;

        if (!key)
            break;
        for (h = series_hash(e, key); e->skeys[h] && e->skeys[h] != key; h = (h + 1) & e->smask)
            ;
        if (!e->skeys[h]) {
            e->skeys[h] = key;
            e->sidx[h] = i;
        }
    }
    e->nseries = i;
    return 0;
}

int64_t h1_engine_series_slot(h1_engine *e, uint64_t key)
{
    int64_t i;

    if (!e->series || !key)
        return -1;
    i = series_get(e, key);
    return i < 0 ? -1 : (int64_t)e->cfg.series_base + i * H1_SERIES_SLOTS;
}

/* A free record, or NULL (counted as dropped). */
static h1_record *rec_take(h1_engine *e)
{
    h1_record *r = e->rfree;

    if (r)
        e->rfree = r->next;
    else if (e->rfresh < e->cfg.records_cap)
        r = &e->recs[e->rfresh++];
    else
        cnt(e, 0, H1_G_RECORDS_DROPPED, 1);
    return r;
}

unsigned h1_engine_records(h1_engine *e, h1_record **out, unsigned max)
{
    unsigned n = 0;

    while (n < max && e->rq_head) {
        out[n++] = e->rq_head;
        e->rq_head = e->rq_head->next;
    }
    if (!e->rq_head)
        e->rq_tail = NULL;
    return n;
}

void h1_engine_records_release(h1_engine *e, h1_record **recs, unsigned n)
{
    unsigned i;

    for (i = 0; i < n; i++) {
        recs[i]->next = e->rfree;
        e->rfree = recs[i];
    }
}

/* Copies buf[sp] into dst (cut to cap); returns the length copied. */
static uint16_t rec_copy(char *dst, size_t cap, const char *buf, http1_span sp)
{
    size_t n = sp.len < cap ? sp.len : cap;

    memcpy(dst, buf + sp.off, n);
    return (uint16_t)n;
}

/* "ip:port" or "[ip]:port" into out (cap >= H1_REC_ADDR); its length. */
static uint16_t fmt_addr(const fp_addr *a, char *out)
{
    char ip[INET6_ADDRSTRLEN];
    size_t n, k = 0;
    char port[8];
    int pk = (int)sizeof(port);
    unsigned v = a->port;

    if ((a->family != AF_INET && a->family != AF_INET6) || !inet_ntop(a->family, a->ip, ip, sizeof(ip)))
        return 0;
    n = strlen(ip);
    if (a->family == AF_INET6)
        out[k++] = '[';
    memcpy(out + k, ip, n);
    k += n;
    if (a->family == AF_INET6)
        out[k++] = ']';
    out[k++] = ':';
    do {
        port[--pk] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    memcpy(out + k, port + pk, sizeof(port) - (size_t)pk);
    return (uint16_t)(k + sizeof(port) - (size_t)pk);
}

static int sa_to_addr(const struct sockaddr_storage *ss, fp_addr *a)
{
    memset(a, 0, sizeof(*a));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;

        a->family = AF_INET;
        a->port = ntohs(s4->sin_port);
        memcpy(a->ip, &s4->sin_addr, 4);
        return 0;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;

        a->family = AF_INET6;
        a->port = ntohs(s6->sin6_port);
        memcpy(a->ip, &s6->sin6_addr, 16);
        return 0;
    }
    return -1;
}

static const char HEX[] = "0123456789abcdef";

static void hex_out(char *out, const uint8_t *b, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        out[2 * i] = HEX[b[i] >> 4];
        out[2 * i + 1] = HEX[b[i] & 15];
    }
}

static inline int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Decodes n hex chars of s into bytes at out (right-aligned in out[0..outn),
 * zero-padded on the left), keeping a lower-cased copy in txt when not NULL.
 * 1 when every char is hex and the value is not all zero. */
static int hex_in(const char *s, size_t n, uint8_t *out, size_t outn, char *txt)
{
    size_t i, pad = outn - n / 2;
    int nz = 0;

    memset(out, 0, pad);
    for (i = 0; i < n; i += 2) {
        int hi = hexval(s[i]), lo = hexval(s[i + 1]);

        if (hi < 0 || lo < 0)
            return 0;
        out[pad + i / 2] = (uint8_t)(hi << 4 | lo);
        nz |= hi | lo;
        if (txt) {
            txt[i] = HEX[hi];
            txt[i + 1] = HEX[lo];
        }
    }
    return nz != 0;
}

static void rand_bytes(h1_engine *e, uint8_t *out, size_t n)
{
    while (n) {
        uint64_t v = rng_next(e->rng);
        size_t k = n < 8 ? n : 8;

        memcpy(out, &v, k);
        out += k;
        n -= k;
    }
}

static void rand_id(h1_engine *e, uint8_t *out, size_t n)
{
    size_t i;

    do {
        rand_bytes(e, out, n);
        for (i = 0; i < n && !out[i]; i++)
            ;
    } while (i == n);
}

static inline int span_is(const char *buf, http1_span s, const char *lower, size_t n)
{
    return s.len == n && http1_span_ieq(buf, s, lower, n);
}

/* traceparent: 00-<32>-<16>-<2> (version 00 exactly 55 chars; a later
 * version may carry more after the flags, RFC: "-" then anything). */
static void trace_w3c(h1_trace *t, const char *v, uint32_t n)
{
    uint8_t fl[1];

    if (n < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-' || (n > 55 && v[55] != '-'))
        return;
    if (hexval(v[0]) < 0 || hexval(v[1]) < 0 || (v[0] == 'f' && v[1] == 'f') || (n > 55 && v[0] == '0' && v[1] == '0'))
        return;
    if (!hex_in(v + 3, 32, t->trace, 16, t->tp_trace) || !hex_in(v + 36, 16, t->parent, 8, NULL))
        return;
    if (hexval(v[53]) < 0 || hexval(v[54]) < 0)
        return;
    hex_in(v + 53, 2, fl, 1, t->tp_flags);
    t->fam |= TR_W3C;
    t->sampled = fl[0] & 1;
    t->has_parent = 1;
}

/* The incoming context (the headers found by obs_begin); then the ids of
 * our span. */
static void trace_begin(h1_engine *e, h1_trace *t, const char *buf, const http1_header *tp,
                        const http1_header *b3id, const http1_header *b3span, const http1_header *b3smp,
                        const http1_header *b3flags, const http1_header *b3)
{
    uint8_t tid[16], sid[8];
    int b3m_sampled = -1;

    memset(t, 0, sizeof(*t));
    if (tp)
        trace_w3c(t, buf + tp->value.off, tp->value.len);
    if (b3id && b3span && (b3id->value.len == 16 || b3id->value.len == 32) && b3span->value.len == 16 &&
        hex_in(buf + b3id->value.off, b3id->value.len, tid, 16, t->b3m_tid) &&
        hex_in(buf + b3span->value.off, 16, sid, 8, t->b3m_span)) {
        t->fam |= TR_B3M;
        t->b3m_tid_len = (uint8_t)b3id->value.len;
        if (b3flags && b3flags->value.len == 1 && buf[b3flags->value.off] == '1')
            b3m_sampled = 1;
        else if (b3smp) {
            const char *v = buf + b3smp->value.off;
            uint32_t n = b3smp->value.len;

            if ((n == 1 && v[0] == '1') || (n == 4 && !strncasecmp(v, "true", 4)))
                b3m_sampled = 1;
            else if ((n == 1 && v[0] == '0') || (n == 5 && !strncasecmp(v, "false", 5)))
                b3m_sampled = 0;
        }
        t->b3m_sampled_given = b3m_sampled >= 0;
        if (!(t->fam & TR_W3C)) {
            memcpy(t->trace, tid, 16);
            memcpy(t->parent, sid, 8);
            t->has_parent = 1;
            t->sampled = b3m_sampled > 0;
        }
    }
    if (b3) {
        /* {trace 16|32}-{span 16}[-{sampled}[-{parent 16}]] */
        const char *v = buf + b3->value.off;
        uint32_t n = b3->value.len, tl = n >= 33 && v[32] == '-' ? 32 : 16;
        uint8_t bt[16], bs[8], bp[8];

        if (n >= tl + 17 && v[tl] == '-' && hex_in(v, tl, bt, 16, t->b3s_tid) &&
            hex_in(v + tl + 1, 16, bs, 8, t->b3s_span) &&
            (n == tl + 17 ||
             (v[tl + 17] == '-' && (v[tl + 18] == '0' || v[tl + 18] == '1' || v[tl + 18] == 'd') &&
              (n == tl + 19 || (n == tl + 36 && v[tl + 19] == '-' && hex_in(v + tl + 20, 16, bp, 8, NULL)))))) {
            t->fam |= TR_B3S;
            t->b3s_tid_len = (uint8_t)tl;
            t->b3s_sampled = n > tl + 17 ? v[tl + 18] : 0;
            if (!(t->fam & (TR_W3C | TR_B3M))) {
                memcpy(t->trace, bt, 16);
                memcpy(t->parent, bs, 8);
                t->has_parent = 1;
                t->sampled = t->b3s_sampled == '1' || t->b3s_sampled == 'd';
            }
        }
    }
    /* No sampling decision came with the winning family: draw one. */
    if (!t->fam || (!(t->fam & (TR_W3C | TR_B3M)) && !t->b3s_sampled) ||
        (!(t->fam & TR_W3C) && (t->fam & TR_B3M) && !t->b3m_sampled_given)) {
        if (!t->fam) {
            t->fam = TR_NEW;
            rand_id(e, t->trace, 16);
        }
        t->sampled = e->sample_all || rng_next(e->rng) < e->sample_thr;
    }
    rand_id(e, t->span, 8);
}

/* The route's request ops plus the trace fields as set operations, into
 * *m (fields in set[], values in vals: >= 4 * 72 bytes). Returns the ops to
 * hand to rw_request. */
#define TRACE_VALS 320
static int ops_names(const rw_ops *o, const char *name, size_t n)
{
    uint32_t i;

    if (!o)
        return 0;
    for (i = 0; i < o->nset; i++)
        if (o->set[i].name.len == n && !strncasecmp(o->set[i].name.ptr, name, n))
            return 1;
    for (i = 0; i < o->nadd; i++)
        if (o->add[i].name.len == n && !strncasecmp(o->add[i].name.ptr, name, n))
            return 1;
    for (i = 0; i < o->nremove; i++)
        if (o->remove[i].len == n && !strncasecmp(o->remove[i].ptr, name, n))
            return 1;
    return 0;
}

static void ops_push(rw_ops *m, rw_field *set, const rw_ops *route, const char *name, const char *val,
                     size_t vlen)
{
    size_t n = strlen(name);

    if (m->nset >= RW_MAX_SET || ops_names(route, name, n))
        return;
    set[m->nset].name.ptr = name;
    set[m->nset].name.len = (uint32_t)n;
    set[m->nset].value.ptr = val;
    set[m->nset].value.len = (uint32_t)vlen;
    m->nset++;
}

static const rw_ops *trace_ops(const h1_trace *t, const rw_ops *route, rw_ops *m, rw_field *set, char *vals)
{
    char span[16], *v = vals;
    char smp = t->sampled ? '1' : '0';

    if (route)
        *m = *route;
    else
        memset(m, 0, sizeof(*m));
    if (m->nset)
        memcpy(set, route->set, m->nset * sizeof(*set));
    m->set = set;
    hex_out(span, t->span, 8);
    if (t->fam & (TR_W3C | TR_NEW)) {
        /* 00-<trace>-<span>-<flags> */
        memcpy(v, "00-", 3);
        if (t->fam & TR_W3C) {
            memcpy(v + 3, t->tp_trace, 32);
            memcpy(v + 53, t->tp_flags, 2);
        } else {
            hex_out(v + 3, t->trace, 16);
            v[53] = '0';
            v[54] = smp;
        }
        v[35] = '-';
        memcpy(v + 36, span, 16);
        v[52] = '-';
        ops_push(m, set, route, "traceparent", v, 55);
        v += 56;
    }
    if (t->fam & TR_NEW) {
        hex_out(v, t->trace, 16);
        ops_push(m, set, route, "x-b3-traceid", v, 32);
        v += 32;
    }
    if (t->fam & (TR_B3M | TR_NEW)) {
        memcpy(v, span, 16);
        ops_push(m, set, route, "x-b3-spanid", v, 16);
        v += 16;
        if (t->fam & TR_B3M)
            ops_push(m, set, route, "x-b3-parentspanid", t->b3m_span, 16);
        if (!t->b3m_sampled_given) {
            *v = smp;
            ops_push(m, set, route, "x-b3-sampled", v, 1);
            v += 1;
        }
    }
    if (t->fam & TR_B3S) {
        size_t k = t->b3s_tid_len;

        memcpy(v, t->b3s_tid, k);
        v[k] = '-';
        memcpy(v + k + 1, span, 16);
        v[k + 17] = '-';
        v[k + 18] = t->b3s_sampled ? t->b3s_sampled : smp;
        v[k + 19] = '-';
        memcpy(v + k + 20, t->b3s_span, 16);
        ops_push(m, set, route, "b3", v, k + 36);
        v += k + 36;
    }
    return m;
}

/* A request starts being measured: its clock, and (records, tracing) what
 * its head says. buf/p NULL: a head that did not parse. */
static void obs_begin(h1_engine *e, h1_conn *c, const char *buf, const http1_parser *p, const http1_framing *f)
{
    const http1_header *tp = NULL, *b3id = NULL, *b3span = NULL, *b3smp = NULL, *b3flags = NULL, *b3 = NULL;
    const http1_header *ua = NULL, *rid = NULL;
    h1_record *r = NULL;
    uint32_t i;

    c->rq_live = 1;
    c->rflags = 0;
    c->status_sent = 0;
    c->rq_bytes = c->rs_bytes = 0;
    c->t_sent_us = c->upstream_us = 0;
    c->t0_us = clock_us(CLOCK_MONOTONIC);
    c->tr = NULL;
    c->rec = NULL;
    if (e->recs && (r = c->rec = rec_take(e))) {
        r->start_us = clock_us(CLOCK_REALTIME);
        r->listener_block = c->listener_block;
        r->minor = p ? (uint8_t)p->minor_version : 1;
        r->method_len = r->path_len = r->authority_len = r->ua_len = r->rid_len = r->upstream_len = r->route_len = 0;
        r->traced = r->has_parent = r->sampled = 0;
        r->peer_len = (uint16_t)c->peer_addr.len;
        memcpy(r->peer, c->peer_addr.ptr, c->peer_addr.len);
        r->odst_len = (uint16_t)c->odst.len;
        memcpy(r->odst, c->odst.ptr, c->odst.len);
    }
    if (!p || (!r && !e->cfg.tracing))
        return;
    for (i = 0; i < p->num_headers; i++) {
        const http1_header *h = &p->headers[i];

        switch (h->name.len) {
        case 2:
            if (!b3 && span_is(buf, h->name, "b3", 2))
                b3 = h;
            break;
        case 10:
            if (!ua && span_is(buf, h->name, "user-agent", 10))
                ua = h;
            else if (!b3flags && span_is(buf, h->name, "x-b3-flags", 10))
                b3flags = h;
            break;
        case 11:
            if (!tp && span_is(buf, h->name, "traceparent", 11))
                tp = h;
            else if (!b3span && span_is(buf, h->name, "x-b3-spanid", 11))
                b3span = h;
            break;
        case 12:
            if (!rid && span_is(buf, h->name, "x-request-id", 12))
                rid = h;
            else if (!b3id && span_is(buf, h->name, "x-b3-traceid", 12))
                b3id = h;
            else if (!b3smp && span_is(buf, h->name, "x-b3-sampled", 12))
                b3smp = h;
            break;
        default:
            break;
        }
    }
    if (e->cfg.tracing) {
        c->tr = &c->tr_store;
        trace_begin(e, c->tr, buf, tp, b3id, b3span, b3smp, b3flags, b3);
    }
    if (r) {
        r->method_len = rec_copy(r->method, H1_REC_METHOD, buf, p->method);
        r->path_len = rec_copy(r->path, H1_REC_PATH, buf, p->target);
        if (f && f->host_index >= 0)
            r->authority_len = rec_copy(r->authority, H1_REC_AUTHORITY, buf, p->headers[f->host_index].value);
        if (ua)
            r->ua_len = rec_copy(r->ua, H1_REC_UA, buf, ua->value);
        if (rid)
            r->rid_len = rec_copy(r->rid, H1_REC_RID, buf, rid->value);
    }
}

/* The current request ended: its series and its record. */
static void obs_end(h1_engine *e, h1_conn *c)
{
    uint64_t dur = clock_us(CLOCK_MONOTONIC) - c->t0_us;
    uint32_t cb = c->routed && c->route.action == H1_ACT_PROXY ? c->route.cluster_block : 0;
    h1_record *r = c->rec;

    c->rq_live = 0;
    c->flags |= c->rflags;
    if (e->series)
        series_record(e, H1_KEY_HTTP(c->listener_block, cb, c->rflags, (uint32_t)c->status_sent), dur,
                      c->rq_bytes, c->rs_bytes);
    if (!r)
        return;
    c->rec = NULL;
    r->duration_us = dur;
    r->upstream_us = c->upstream_us;
    r->bytes_received = c->rq_bytes;
    r->bytes_sent = c->rs_bytes;
    r->status = (uint32_t)c->status_sent;
    r->flags = c->rflags;
    r->cluster_block = cb;
    if (cb || (c->routed && c->route.action == H1_ACT_PROXY))
        r->upstream_len = fmt_addr(&c->route.upstream, r->upstream);
    if (c->tr) {
        r->traced = 1;
        r->sampled = c->tr->sampled;
        r->has_parent = c->tr->has_parent;
        memcpy(r->trace_id, c->tr->trace, 16);
        memcpy(r->span_id, c->tr->span, 8);
        memcpy(r->parent_id, c->tr->parent, 8);
    }
    r->next = NULL;
    if (e->rq_tail)
        e->rq_tail->next = r;
    else
        e->rq_head = r;
    e->rq_tail = r;
}

/* ---- buffers ---------------------------------------------------------------- */

static h1_buf *buf_get(h1_engine *e)
{
    h1_buf *b = e->free_bufs;

    if (b) {
        e->free_bufs = b->next;
        e->nfree_bufs--;
    } else {
        b = malloc(e->buf_size);
        if (!b)
            return NULL;
        http1_parser_init(&b->p, (http1_header *)(b + 1), e->hcap, &e->cfg.limits);
        b->data = (char *)((http1_header *)(b + 1) + e->hcap);
        e->nbufs++;
    }
    b->q.n = b->q.i = b->q.nsl = 0;
    http1_parser_reset(&b->p);
    return b;
}

static void buf_put(h1_engine *e, h1_buf *b)
{
    if (!b)
        return;
    if (e->nfree_bufs >= FREE_BUFS_MAX) {
        free(b);
        e->nbufs--;
        return;
    }
    b->next = e->free_bufs;
    e->free_bufs = b;
    e->nfree_bufs++;
}

/* ---- timers ----------------------------------------------------------------- */

static void timer_cancel(h1_engine *e, h1_timer *t)
{
    tlist *l;

    if (t->kind < 0)
        return;
    l = &e->timers[t->kind];
    if (t->prev)
        t->prev->next = t->next;
    else
        l->head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        l->tail = t->prev;
    t->prev = t->next = NULL;
    t->kind = -1;
}

/* Each kind's timeouts are usually one value (per config or per route), so
 * the new deadline is normally the latest: the walk from the tail stops at
 * once, O(1). Mixed values cost a short walk, never a wrong order. ms 0
 * arms nothing. */
static void timer_arm(h1_engine *e, h1_timer *t, int kind, uint32_t ms)
{
    tlist *l = &e->timers[kind];
    h1_timer *after;

    timer_cancel(e, t);
    if (!ms)
        return;
    t->at = e->now + ms;
    t->kind = kind;
    after = l->tail;
    while (after && after->at > t->at)
        after = after->prev;
    t->prev = after;
    t->next = after ? after->next : l->head;
    if (t->next)
        t->next->prev = t;
    else
        l->tail = t;
    if (after)
        after->next = t;
    else
        l->head = t;
}

/* ---- reported events and object recycling ---------------------------------- */

static int evq_push(h1_engine *e, const h1_event *ev, h1_conn *c)
{
    if (e->evq_head + e->evq_len == e->evq_cap) {
        if (e->evq_head) {
            memmove(e->evq, e->evq + e->evq_head, e->evq_len * sizeof(qev));
            e->evq_head = 0;
        } else {
            unsigned n = e->evq_cap ? e->evq_cap * 2 : 64;
            qev *q = realloc(e->evq, n * sizeof(qev));

            if (!q)
                return -1;
            e->evq = q;
            e->evq_cap = n;
        }
    }
    e->evq[e->evq_head + e->evq_len].ev = *ev;
    e->evq[e->evq_head + e->evq_len].c = c;
    e->evq_len++;
    return 0;
}

static void zombie_conn(h1_engine *e, h1_conn *c)
{
    c->znext = e->zconns;
    e->zconns = c;
}

/* Recycles what ended, once no collected event can name it any more. */
static void flush_zombies(h1_engine *e)
{
    while (e->zconns) {
        h1_conn *c = e->zconns;

        e->zconns = c->znext;
        if (c->strs_heap)
            free(c->strs_heap);
        if (e->nfree_conns >= FREE_OBJS_MAX) {
            free(c);
            continue;
        }
        c->znext = e->free_conns;
        e->free_conns = c;
        e->nfree_conns++;
    }
    while (e->zups) {
        h1_up *u = e->zups;

        e->zups = u->znext;
        if (e->nfree_ups >= FREE_OBJS_MAX) {
            free(u);
            continue;
        }
        u->znext = e->free_ups;
        e->free_ups = u;
        e->nfree_ups++;
    }
}

static void pending_unlink(h1_engine *e, h1_conn *c)
{
    if (!c->pending)
        return;
    if (c->pprev)
        c->pprev->pnext = c->pnext;
    else
        e->pend_head = c->pnext;
    if (c->pnext)
        c->pnext->pprev = c->pprev;
    else
        e->pend_tail = c->pprev;
    c->pnext = c->pprev = NULL;
    c->pending = 0;
}

static void pending_add(h1_engine *e, h1_conn *c)
{
    if (c->pending || c->mode == M_DEAD)
        return;
    c->pending = 1;
    c->pnext = NULL;
    c->pprev = e->pend_tail;
    if (e->pend_tail)
        e->pend_tail->pnext = c;
    else
        e->pend_head = c;
    e->pend_tail = c;
}

/* ---- upstream connections and pools ---------------------------------------- */

static int addr_eq(const fp_addr *a, const fp_addr *b)
{
    if (a->family != b->family)
        return 0;
    if (!a->family)
        return 1;
    return a->port == b->port && !memcmp(a->ip, b->ip, a->family == AF_INET ? 4 : 16);
}

static uint32_t addr_hash(uint32_t h, const fp_addr *a)
{
    unsigned i, n = a->family == AF_INET ? 4 : a->family ? 16 : 0;

    h = (h ^ (uint32_t)a->family) * 16777619u;
    h = (h ^ a->port) * 16777619u;
    for (i = 0; i < n; i++)
        h = (h ^ a->ip[i]) * 16777619u;
    return h;
}

/* The pool of (dst, src), created on first use; NULL when out of memory
 * (the connection is then simply not pooled). */
static h1_pool *pool_get(h1_engine *e, const fp_addr *dst, const fp_addr *src, int create)
{
    uint32_t h = addr_hash(addr_hash(2166136261u, dst), src);
    h1_pool *p;

    if (e->pool_slots) {
        for (p = e->pools[h & (e->pool_slots - 1)]; p; p = p->hnext)
            if (addr_eq(&p->dst, dst) && addr_eq(&p->src, src))
                return p;
    }
    if (!create)
        return NULL;
    if (e->npools >= e->pool_slots) {
        unsigned n = e->pool_slots ? e->pool_slots * 2 : 64, i;
        h1_pool **t = calloc(n, sizeof(*t));

        if (!t)
            return NULL;
        for (i = 0; i < e->pool_slots; i++) {
            while (e->pools[i]) {
                h1_pool *q = e->pools[i];
                uint32_t qh = addr_hash(addr_hash(2166136261u, &q->dst), &q->src);

                e->pools[i] = q->hnext;
                q->hnext = t[qh & (n - 1)];
                t[qh & (n - 1)] = q;
            }
        }
        free(e->pools);
        e->pools = t;
        e->pool_slots = n;
    }
    p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->dst = *dst;
    p->src = *src;
    p->hnext = e->pools[h & (e->pool_slots - 1)];
    e->pools[h & (e->pool_slots - 1)] = p;
    e->npools++;
    return p;
}

static void pool_unlink(h1_engine *e, h1_up *u)
{
    h1_pool *p = u->pool;

    if (!u->idle)
        return;
    if (u->pprev)
        u->pprev->pnext = u->pnext;
    else
        p->idle = u->pnext;
    if (u->pnext)
        u->pnext->pprev = u->pprev;
    u->pnext = u->pprev = NULL;
    u->idle = 0;
    p->nidle--;
    e->st.upstream_idle--;
}

static void g_release(h1_engine *e, gv_cluster *c, int what);

static void up_close(h1_engine *e, h1_up *u, int abort_it)
{
    if (u->dead)
        return;
    timer_cancel(e, &u->t);
    pool_unlink(e, u);
    if (abort_it)
        fp_sock_abort(u->fd);
    else
        fp_sock_close(u->fd);
    cnt(e, u->block, H1_C_CX_DESTROY, 1);
    e->st.upstream_open--;
    if (u->gcl) {
        g_release(e, u->gcl, GV_L_CX);
        u->gcl = NULL;
        e->cw_kick = e->cw_head != NULL;
    }
    u->dead = 1;
    u->owner = NULL;
    u->fd = -1;
    u->znext = e->zups;
    e->zups = u;
}

static h1_up *up_alloc(h1_engine *e)
{
    h1_up *u = e->free_ups;

    if (u) {
        e->free_ups = u->znext;
        e->nfree_ups--;
    } else if (!(u = malloc(sizeof(*u)))) {
        return NULL;
    }
    memset(u, 0, sizeof(*u));
    u->t.kind = -1;
    return u;
}

/* Milliseconds left of the total timeout (0: none; at least 1 when armed). */
static uint32_t total_left(const h1_engine *e, const h1_conn *c)
{
    if (!c->deadline)
        return 0;
    return c->deadline > e->now ? (uint32_t)(c->deadline - e->now) : 1;
}

/* Starts a connection to the route's endpoint; NULL with errno. */
static h1_up *up_connect(h1_engine *e, h1_conn *c)
{
    const h1_route *rt = &c->route;
    struct epoll_event ev;
    int inprog = 0, fd;
    h1_up *u;

    fd = fp_connect(&rt->upstream, rt->source.family ? &rt->source : NULL, &inprog);
    if (fd < 0) {
        errno = -fd;
        return NULL;
    }
    u = up_alloc(e);
    if (!u) {
        fp_sock_close(fd);
        errno = ENOMEM;
        return NULL;
    }
    u->fd = fd;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = (void *)((uintptr_t)u | TAG_UP);
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int err = errno;

        fp_sock_close(fd);
        u->znext = e->zups;
        u->dead = 1;
        e->zups = u;
        errno = err;
        return NULL;
    }
    u->connecting = (uint8_t)inprog;
    u->s.wr = (uint8_t)!inprog;
    u->block = rt->cluster_block;
    u->pool = pool_get(e, &rt->upstream, &rt->source, 1);
    if (inprog)
        timer_arm(e, &u->t, T_CONNECT, c->deadline && total_left(e, c) < rt->connect_timeout_ms
                                           ? total_left(e, c) : rt->connect_timeout_ms);
    cnt(e, u->block, H1_C_CX_TOTAL, 1);
    e->st.upstream_connects++;
    e->st.upstream_open++;
    return u;
}

/* An idle pooled connection to the route's endpoint, or NULL. */
static h1_up *pool_take(h1_engine *e, const h1_route *rt)
{
    h1_pool *p = pool_get(e, &rt->upstream, &rt->source, 0);
    h1_up *u;

    if (!p || !p->idle)
        return NULL;
    u = p->idle;
    pool_unlink(e, u);
    timer_cancel(e, &u->t);
    /* EPOLLOUT edges are noted while idle, but a stale 0 would stall the
     * first write forever; a wrong 1 costs one EAGAIN. */
    u->s.wr = 1;
    u->reused = 1;
    u->block = rt->cluster_block;
    return u;
}

/* The exchange on u ended; keep it for the next request when allowed. */
static void up_release(h1_engine *e, h1_conn *c, int reuse)
{
    h1_up *u = c->up;

    c->up = NULL;
    if (!u)
        return;
    u->owner = NULL;
    timer_cancel(e, &u->t);
    if (reuse && u->pool && !e->draining && u->pool->nidle < e->cfg.pool_max_idle && !u->s.hup &&
        !u->s.err) {
        h1_pool *p = u->pool;

        u->idle = 1;
        u->pprev = NULL;
        u->pnext = p->idle;
        if (p->idle)
            p->idle->pprev = u;
        p->idle = u;
        p->nidle++;
        e->st.upstream_idle++;
        timer_arm(e, &u->t, T_POOL, e->cfg.pool_idle_ms);
        e->cw_kick = e->cw_head != NULL;
        return;
    }
    up_close(e, u, 0);
}

/* ---- output queues ---------------------------------------------------------- */

static inline int txq_empty(const txq *q)
{
    return q->i == q->n;
}

static inline void txq_reset(txq *q)
{
    q->n = q->i = q->nsl = 0;
}

static inline void txq_add(txq *q, const void *p, size_t len)
{
    if (!len)
        return;
    q->iov[q->n].iov_base = (void *)p;
    q->iov[q->n].iov_len = len;
    q->n++;
}

static void txq_add_chunk(txq *q, const char *p, size_t len)
{
    char *s = q->sl[q->nsl++];
    int k = 0, sh;

    for (sh = 60; sh > 0 && !((uint64_t)len >> sh); sh -= 4)
        ;
    for (; sh >= 0; sh -= 4)
        s[k++] = "0123456789abcdef"[((uint64_t)len >> sh) & 15];
    s[k++] = '\r';
    s[k++] = '\n';
    txq_add(q, s, (size_t)k);
    txq_add(q, p, len);
    txq_add(q, CRLF, 2);
}

/* Writes q to fd: 1 when it is empty, 0 when the socket is full (bytes
 * left), -1 on an error. *moved gets the bytes written. */
static int txq_flush(int fd, sockst *s, txq *q, uint64_t *moved)
{
    *moved = 0;
    while (q->i < q->n) {
        ssize_t k;

        if (!s->wr)
            return 0;
        if (q->n - q->i == 1) {
            k = send(fd, q->iov[q->i].iov_base, q->iov[q->i].iov_len, MSG_NOSIGNAL);
        } else {
            struct msghdr m;

            memset(&m, 0, sizeof(m));
            m.msg_iov = q->iov + q->i;
            m.msg_iovlen = q->n - q->i;
            k = sendmsg(fd, &m, MSG_NOSIGNAL);
        }
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                s->wr = 0;
                return 0;
            }
            return -1;
        }
        *moved += (uint64_t)k;
        while (k > 0) {
            struct iovec *v = &q->iov[q->i];

            if ((size_t)k >= v->iov_len) {
                k -= (ssize_t)v->iov_len;
                q->i++;
            } else {
                v->iov_base = (char *)v->iov_base + k;
                v->iov_len -= (size_t)k;
                k = 0;
            }
        }
        /* A partial write means the send buffer filled (SOCK_NOSPACE is
         * set): EPOLLOUT will come when it drains. */
        if (q->i < q->n)
            s->wr = 0;
    }
    txq_reset(q);
    return 1;
}

static ssize_t sock_read(int fd, sockst *s, char *p, size_t n)
{
    ssize_t k = recv(fd, p, n, 0);

    if (k > 0) {
        if ((size_t)k < n && !s->hup)
            s->rd = 0;
        return k;
    }
    if (k == 0) {
        s->rd = 0;
        return 0;
    }
    if (errno == EINTR)
        return IO_AGAIN;
    s->rd = 0;
    return errno == EAGAIN || errno == EWOULDBLOCK ? IO_AGAIN : IO_ERR;
}

/* ---- connection endings ------------------------------------------------------ */

#define END_CLOSE 1    /* FIN, reported CLOSED */
#define END_ABORT 2    /* RST, reported CLOSED */
#define END_DETACH 3   /* handed back, reported DETACH */
#define END_SILENT 4   /* RST, not reported (close_conn, free) */

static void gov_request_end(h1_engine *e, h1_conn *c);

static void route_release(h1_engine *e, h1_conn *c)
{
    if (!c->routed)
        return;
    gov_request_end(e, c);
    c->routed = 0;
    if (e->cfg.release)
        e->cfg.release(e->cfg.cb_data, c->route.ref);
}

static void conn_buffers_put(h1_engine *e, h1_conn *c)
{
    buf_put(e, c->r);
    buf_put(e, c->w);
    buf_put(e, c->x);
    c->r = c->w = c->x = NULL;
    c->dq_x = c->uq_w = 0;
}

/* Ends c: its upstream (aborted mid-exchange), its route, buffers, timers,
 * and its socket as `how` says. detach is the H1_DETACH_* for END_DETACH. */
static void conn_end(h1_engine *e, h1_conn *c, int how, int detach)
{
    h1_event ev;

    if (c->mode == M_DEAD)
        return;
    if (c->rq_live)
        obs_end(e, c);
    c->flags |= c->rflags;
    memset(&ev, 0, sizeof(ev));
    ev.user = c->user;
    ev.fd = -1;
    ev.upstream_fd = -1;
    timer_cancel(e, &c->t);
    timer_cancel(e, &c->t2);
    pending_unlink(e, c);
    if (how == END_DETACH && detach == H1_DETACH_TUNNEL && c->up) {
        h1_up *u = c->up;

        epoll_ctl(e->epfd, EPOLL_CTL_DEL, u->fd, NULL);
        ev.upstream_fd = u->fd;
        ev.cluster_block = c->route.cluster_block;
        timer_cancel(e, &u->t);
        if (u->gcl) {
            g_release(e, u->gcl, GV_L_CX);
            u->gcl = NULL;
        }
        e->st.upstream_open--;
        u->dead = 1;
        u->owner = NULL;
        u->znext = e->zups;
        e->zups = u;
        c->up = NULL;
    } else if (c->up) {
        up_close(e, c->up, 1);
        c->up = NULL;
    }
    route_release(e, c);
    conn_buffers_put(e, c);
    if (how == END_DETACH) {
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        ev.kind = H1_EV_DETACH;
        ev.detach = detach;
        ev.fd = c->fd;
    } else {
        if (how == END_CLOSE)
            fp_sock_close(c->fd);
        else
            fp_sock_abort(c->fd);
        ev.kind = H1_EV_CLOSED;
    }
    c->fd = -1;
    c->mode = M_DEAD;
    if (c->aprev)
        c->aprev->anext = c->anext;
    else
        e->all = c->anext;
    if (c->anext)
        c->anext->aprev = c->aprev;
    c->anext = c->aprev = NULL;
    ev.requests = c->requests;
    ev.flags = c->flags;
    if (how != END_SILENT && evq_push(e, &ev, c) == 0) {
        c->queued_ev = 1;
        return;
    }
    /* Silent, or the report could not be queued (out of memory): the
     * caller forgets the connection either way. A detached socket nobody
     * will learn about must not leak. */
    if (how == END_DETACH) {
        fp_sock_abort(ev.fd);
        if (ev.upstream_fd >= 0)
            fp_sock_abort(ev.upstream_fd);
    }
    e->count--;
    zombie_conn(e, c);
}

/* ---- local responses ---------------------------------------------------------- */

typedef struct obuf {
    char *p;
    size_t len, cap;
    int over;
} obuf;

static void ob_put(obuf *o, const char *s, size_t n)
{
    if (!n)
        return;
    if (o->over || n > o->cap - o->len) {
        o->over = 1;
        return;
    }
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void ob_str(obuf *o, const char *s)
{
    ob_put(o, s, strlen(s));
}

static void ob_uint(obuf *o, uint64_t v)
{
    char t[24];
    int k = (int)sizeof(t);

    do {
        t[--k] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    ob_put(o, t + k, sizeof(t) - (size_t)k);
}

/* Whether the request's body has been read whole (else the connection
 * cannot carry another request after a local response). */
static int req_consumed(const h1_conn *c)
{
    return c->rq_body == HTTP1_BODY_NONE || c->rq_end;
}

/* Answers locally: any upstream exchange is abandoned (aborted), the
 * response goes out through W's queue. body_copy is copied behind the head
 * (short error texts); body_ref is referenced (a route's body, valid until
 * release). The connection closes after it when `close` or when it cannot
 * carry another request. */
static void reply_local(h1_engine *e, h1_conn *c, int status, const char *reason, size_t reason_len,
                        rw_str hdrs, const char *body_copy, rw_str body_ref, uint32_t flags, int close)
{
    size_t blen = body_copy ? strlen(body_copy) : body_ref.len;
    obuf o;

    timer_cancel(e, &c->t);
    timer_cancel(e, &c->t2);
    if (c->up) {
        up_close(e, c->up, 1);
        c->up = NULL;
    }
    if (c->r)
        txq_reset(&c->r->q);
    buf_put(e, c->x);
    c->x = NULL;
    c->dq_x = c->uq_w = 0;
    if (!c->w && !(c->w = buf_get(e))) {
        conn_end(e, c, END_ABORT, 0);
        return;
    }
    txq_reset(&c->w->q);
    c->w_start = c->w_pos = c->w_len = 0;
    close = close || !c->client_ka || e->draining || !req_consumed(c);

    o.p = c->w->data;
    o.cap = e->cap;
    o.len = 0;
    o.over = 0;
    ob_str(&o, "HTTP/1.1 ");
    ob_uint(&o, (uint64_t)status);
    ob_put(&o, " ", 1);
    ob_put(&o, reason, reason_len);
    ob_put(&o, CRLF, 2);
    ob_put(&o, hdrs.ptr, hdrs.len);
    ob_str(&o, "content-length: ");
    ob_uint(&o, blen);
    ob_put(&o, CRLF, 2);
    if (close)
        ob_str(&o, "connection: close\r\n");
    else if (c->minor == 0)
        ob_str(&o, "connection: keep-alive\r\n");
    ob_put(&o, CRLF, 2);
    if (body_copy && !c->is_head)
        ob_put(&o, body_copy, blen);
    if (o.over) {
        /* The route's fields do not fit a buffer: a contract break of the
         * caller, answered plainly rather than truncated. */
        static const char tb[] = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n"
                                 "connection: close\r\n\r\n";
        memcpy(c->w->data, tb, sizeof(tb) - 1);
        o.len = sizeof(tb) - 1;
        status = 500;
        close = 1;
        body_ref.len = 0;
    }
    txq_add(&c->w->q, c->w->data, o.len);
    if (!body_copy && !c->is_head)
        txq_add(&c->w->q, body_ref.ptr, body_ref.len);
    c->status_sent = status;
    c->rs_bytes = c->is_head || o.over ? 0 : blen;
    cnt(e, c->listener_block, H1_L_RQ_1XX - 1 + status_class(status), status_class(status) ? 1 : 0);
    e->st.local_responses++;
    c->rflags |= flags;
    c->close_after = (uint8_t)close;
    c->mode = M_LOCAL;
}

static void reply_error(h1_engine *e, h1_conn *c, int status, const char *reason, const char *body,
                        uint32_t flags, int close)
{
    rw_str none = { NULL, 0 };

    reply_local(e, c, status, reason, strlen(reason), none, body, none, flags, close);
}

/* A request that failed parsing or framing: the parser's status, its reason
 * as the body, and close (nothing after a bad head can be trusted). */
static void reply_bad_request(h1_engine *e, h1_conn *c, const http1_error *err)
{
    static const char *const names[] = { "Bad Request", "Payload Too Large", "URI Too Long",
                                         "Request Header Fields Too Large", "Not Implemented",
                                         "HTTP Version Not Supported", "Internal Server Error" };
    int st = err->status ? err->status : 400;
    const char *name = st == 413 ? names[1] : st == 414 ? names[2] : st == 431 ? names[3]
                     : st == 501 ? names[4] : st == 505 ? names[5] : st == 500 ? names[6] : names[0];
    char body[160];
    size_t n = err->reason ? strlen(err->reason) : 0;

    if (n > sizeof(body) - 2)
        n = sizeof(body) - 2;
    if (n)
        memcpy(body, err->reason, n);
    body[n] = '\n';
    body[n + 1] = 0;
    c->is_head = 0;
    reply_error(e, c, st, name, body, H1_F_DPE, 1);
}

/* ---- keep-alive, linger ------------------------------------------------------ */

static void begin_head(h1_engine *e, h1_conn *c)
{
    c->mode = M_HEAD;
    c->rq = 0;
    c->rs = 0;
    c->is_head = c->is_connect = c->upgrade = 0;
    c->client_ka = 1;
    c->rq_body = HTTP1_BODY_NONE;
    c->rq_end = 0;
    c->hold = 0;
    timer_arm(e, &c->t, T_IDLE, e->cfg.client_idle_ms);
}

/* The response was written: shut our side, read the client out. */
static void linger_close(h1_engine *e, h1_conn *c)
{
    if (c->up)
        up_release(e, c, 0);
    route_release(e, c);
    conn_buffers_put(e, c);
    shutdown(c->fd, SHUT_WR);
    c->mode = M_LINGER;
    /* reads that were pending must be drained now */
    c->s.rd = 1;
    timer_arm(e, &c->t, T_LINGER, LINGER_MS);
}

/* The exchange (local or proxied) is over and the connection stays:
 * pipelined bytes stay in R, to be parsed now; no buffer is kept for
 * nothing. */
static void next_request(h1_engine *e, h1_conn *c)
{
    route_release(e, c);
    buf_put(e, c->x);
    buf_put(e, c->w);
    c->x = c->w = NULL;
    c->dq_x = c->uq_w = 0;
    if (c->r) {
        txq_reset(&c->r->q);
        http1_parser_reset(&c->r->p);
        c->r_start = c->r_pos;
        if (c->r_start == c->r_len) {
            buf_put(e, c->r);
            c->r = NULL;
        }
    }
    begin_head(e, c);
}

/* ---- the upstream exchange ---------------------------------------------------- */

static int rq_produce(h1_engine *e, h1_conn *c);
static int rs_produce(h1_engine *e, h1_conn *c);

/* 1 when the message's Transfer-Encoding is exactly one field "chunked":
 * then the re-framed body may be announced by our own field. Otherwise the
 * received field (other codings, chunked last) is forwarded as it is. */
static int te_plain_chunked(const char *buf, const http1_parser *p, const http1_framing *f)
{
    uint32_t i, n = 0;

    if (f->transfer_encoding_index < 0)
        return 0;
    for (i = 0; i < p->num_headers; i++)
        if (p->headers[i].name.len == 17 && http1_span_ieq(buf, p->headers[i].name, "transfer-encoding", 17))
            n++;
    return n == 1 && http1_span_ieq(buf, p->headers[f->transfer_encoding_index].value, "chunked", 7);
}

/* Writes the request head into W and queues it towards the upstream, with
 * the body bytes already in R; resets the request body and response state. Used
 * for the first send and for a replay. 0, or -1 when answered locally. */
static int send_request_head(h1_engine *e, h1_conn *c)
{
    h1_buf *r = c->r, *w;
    const char *buf = r->data + c->r_start;
    const rw_ops *ops = c->route.req_ops;
    rw_ops mops;
    rw_field mset[RW_MAX_SET];
    char tvals[TRACE_VALS];
    rw_ctx ctx;
    int64_t n;

    if (!c->w && !(c->w = buf_get(e))) {
        reply_error(e, c, 503, "Service Unavailable", "out of memory\n", 0, 1);
        return -1;
    }
    w = c->w;
    txq_reset(&r->q);
    txq_reset(&w->q);
    http1_parser_reset(&w->p);
    rw_ctx_init(&ctx);
    ctx.version_minor = 1;
    if (c->upgrade)
        ctx.connection = RW_CONN_UPGRADE;
    else if (!e->cfg.pool_max_idle)
        ctx.connection = RW_CONN_CLOSE;
    if (c->rq_body == HTTP1_BODY_CHUNKED && te_plain_chunked(buf, &r->p, &r->f)) {
        ctx.flags = RW_DROP_TRANSFER_ENCODING;
        ctx.extra.ptr = TE_CHUNKED;
        ctx.extra.len = sizeof(TE_CHUNKED) - 1;
    }
    ctx.peer = c->peer;
    ctx.proto = c->proto;
    ctx.default_host = c->default_host;
    ctx.request_id = c->request_id ? r->rid : NULL;
    if (c->tr)
        ops = trace_ops(c->tr, ops, &mops, mset, tvals);
    if (c->rec && !c->rec->rid_len && c->request_id) {
        /* as rw_request generates it (no x-request-id came in) */
        rw_uuid4(r->rid, c->rec->rid);
        c->rec->rid_len = RW_UUID_LEN;
    }
    c->rq_bytes = 0;
    n = rw_request(buf, &r->p, &r->f, ops, &ctx, w->data, e->cap);
    if (n <= 0) {
        if (n == 0)
            reply_error(e, c, 400, "Bad Request", "invalid request target authority\n", H1_F_DPE, 1);
        else
            reply_error(e, c, 431, "Request Header Fields Too Large", "request head too large after rewrite\n",
                        H1_F_DPE, 1);
        return -1;
    }
    txq_add(&r->q, w->data, (size_t)n);
    c->uq_w = 1;
    c->w_start = c->w_pos = c->w_len = (uint32_t)n;
    c->r_pos = c->r_start + c->head_len;
    c->rq = RQ_SEND;
    c->rq_broken = 0;
    c->rs = RS_HEAD;
    c->rs_end = c->resp_byte = 0;
    c->rq_left = r->f.content_length;
    c->rq_end = c->rq_body != HTTP1_BODY_LENGTH && c->rq_body != HTTP1_BODY_CHUNKED;
    if (c->rq_body == HTTP1_BODY_CHUNKED)
        http1_chunked_init(&r->ck, &e->cfg.limits);
    /* Body bytes read with the head leave in the same write. */
    return c->rq_end ? 0 : rq_produce(e, c) < 0 ? -1 : 0;
}

/* ---- governance: breakers, outlier reports, retries (see h1proxy.h) ---------- */

/* A breaker acquire / release (GV_L_*), mirrored in this worker's ledger. */
static int g_acquire(h1_engine *e, gv_cluster *c, const gv_cluster_cfg *cfg, int what)
{
    int ok = what == GV_L_RQ ? gv_rq_acquire(c, cfg)
           : what == GV_L_CX ? gv_cx_acquire(c, cfg)
           : what == GV_L_PENDING ? gv_pending_acquire(c, cfg) : gv_retry_acquire(c, cfg);

    if (ok)
        gv_ledger_add(e->cfg.gv_base, e->cfg.gv_ledger, c, what, 1);
    return ok;
}

static void g_release(h1_engine *e, gv_cluster *c, int what)
{
    if (what == GV_L_RQ)
        gv_rq_release(c);
    else if (what == GV_L_CX)
        gv_cx_release(c);
    else if (what == GV_L_PENDING)
        gv_pending_release(c);
    else
        gv_retry_release(c);
    gv_ledger_add(e->cfg.gv_base, e->cfg.gv_ledger, c, what, -1);
}

static void g_ep(h1_engine *e, gv_endpoint *ep, int64_t d)
{
    atomic_fetch_add_explicit(&ep->rq_active, d, memory_order_relaxed);
    gv_ledger_add_ep(e->cfg.gv_base, e->cfg.gv_ledger, ep, d);
}

static void begin_attempt(h1_engine *e, h1_conn *c);

static void cw_unlink(h1_engine *e, h1_conn *c)
{
    if (!c->cwprev && e->cw_head != c)
        return;
    if (c->cwprev)
        c->cwprev->cwnext = c->cwnext;
    else
        e->cw_head = c->cwnext;
    if (c->cwnext)
        c->cwnext->cwprev = c->cwprev;
    else
        e->cw_tail = c->cwprev;
    c->cwnext = c->cwprev = NULL;
}

static void cw_add(h1_engine *e, h1_conn *c)
{
    c->cwnext = NULL;
    c->cwprev = e->cw_tail;
    if (e->cw_tail)
        e->cw_tail->cwnext = c;
    else
        e->cw_head = c;
    e->cw_tail = c;
}

/* The live attempt's outcome, once, to the outlier detector. */
static void gov_report(h1_engine *e, h1_conn *c, int outcome)
{
    if (c->gv_reported || !c->route.gep || !c->route.gcl)
        return;
    c->gv_reported = 1;
    gv_outlier_report(c->route.gcl, c->route.gep, c->route.gcfg, outcome, e->now);
}

/* The live attempt is over (its upstream closed or released by the caller). */
static void gov_attempt_end(h1_engine *e, h1_conn *c)
{
    if (c->gv_ep) {
        g_ep(e, c->route.gep, -1);
        c->gv_ep = 0;
    }
    if (c->gv_retry) {
        g_release(e, c->route.gcl, GV_L_RETRY);
        c->gv_retry = 0;
    }
}

static void gov_request_end(h1_engine *e, h1_conn *c)
{
    gov_attempt_end(e, c);
    if (c->gv_pending) {
        g_release(e, c->route.gcl, GV_L_PENDING);
        c->gv_pending = 0;
    }
    cw_unlink(e, c);
    if (c->gv_rq) {
        g_release(e, c->route.gcl, GV_L_RQ);
        c->gv_rq = 0;
    }
    timer_cancel(e, &c->t2);
}

static void overflow(h1_engine *e, h1_conn *c, const char *why)
{
    static const char hdr[] = "x-fastproxy-overloaded: true\r\n";
    rw_str h = { hdr, sizeof(hdr) - 1 }, none = { NULL, 0 };

    reply_local(e, c, 503, "Service Unavailable", 19, h, why, none, H1_F_UO, 0);
}

/* Waits in M_WAIT for `what`; ms 0 = no timer. */
static void wait_for(h1_engine *e, h1_conn *c, int what, uint32_t ms)
{
    c->mode = M_WAIT;
    c->wait = (uint8_t)what;
    timer_arm(e, &c->t, T_WAIT, ms);
}

/* Retries the request when the outcome, the policy, the budget and safety
 * allow (see h1proxy.h); 1 when it did (the caller stops), 0 when the
 * failure stands. The outcome was reported to the outlier detector. */
static int try_retry(h1_engine *e, h1_conn *c, int outcome, int status)
{
    const gv_retry *rp = c->route.retry;
    h1_route nr;
    void *old;
    uint32_t ms;

    if (!rp || !e->cfg.retry || !gv_retry_wanted(rp, outcome, status))
        return 0;
    if (c->retries >= rp->num_retries) {
        c->rflags |= H1_F_URX;
        return 0;
    }
    if (!c->hold || c->resp_fwd || (c->w && !txq_empty(&c->w->q)))
        return 0;
    if (outcome != GV_ATTEMPT_CONNECT_FAIL && !c->idempotent && !rp->non_idempotent)
        return 0;
    if (c->deadline && e->now >= c->deadline)
        return 0;
    gov_attempt_end(e, c);
    if (c->route.gcl) {
        if (!g_acquire(e, c->route.gcl, c->route.gcfg, GV_L_RETRY))
            return 0;
        c->gv_retry = 1;
    }
    memset(&nr, 0, sizeof(nr));
    if (e->cfg.retry(e->cfg.cb_data, c->user, c->route.ref, c->tried, c->ntried, &nr) < 0 ||
        nr.action != H1_ACT_PROXY) {
        gov_attempt_end(e, c);
        return 0;
    }
    if (c->up) {
        up_close(e, c->up, 1);
        c->up = NULL;
    }
    old = c->route.ref;
    nr.flags = c->route.flags;
    c->route = nr;
    if (e->cfg.release)
        e->cfg.release(e->cfg.cb_data, old);
    rp = c->route.retry;       /* the old decision may be gone */
    c->retries++;
    e->st.retries++;
    /* the response side starts over; R still holds the whole request */
    timer_cancel(e, &c->t);
    txq_reset(&c->r->q);
    c->uq_w = 0;
    if (c->w) {
        txq_reset(&c->w->q);
        http1_parser_reset(&c->w->p);
    }
    buf_put(e, c->x);
    c->x = NULL;
    c->dq_x = 0;
    c->w_start = c->w_pos = c->w_len = 0;
    c->rs = RS_HEAD;
    c->resp_byte = 0;
    c->status_sent = 0;
    ms = rp ? gv_backoff_ms(rp, c->retries, rng_next(e->rng)) : 0;
    if (c->deadline && (!ms || ms > total_left(e, c)))
        ms = ms ? total_left(e, c) : 0;
    if (!ms) {
        begin_attempt(e, c);
        return 1;
    }
    wait_for(e, c, W_BACKOFF, ms);
    return 1;
}

static void connect_failed(h1_engine *e, h1_conn *c, int timeout)
{
    if (timeout && c->deadline && e->now >= c->deadline) {
        /* cut short by the route's total timeout, not the endpoint's fault */
        cnt(e, c->route.cluster_block, H1_C_RQ_TIMEOUT, 1);
        reply_error(e, c, 504, "Gateway Timeout", "upstream response timeout\n", H1_F_UT, 0);
        return;
    }
    cnt(e, c->route.cluster_block, H1_C_CONNECT_FAIL, 1);
    if (timeout)
        cnt(e, c->route.cluster_block, H1_C_CONNECT_TIMEOUT, 1);
    gov_report(e, c, GV_GATEWAY);
    if (try_retry(e, c, GV_ATTEMPT_CONNECT_FAIL, 0))
        return;
    reply_error(e, c, 503, "Service Unavailable",
                timeout ? "upstream connect timeout\n" : "upstream connect failure\n", H1_F_UF, 0);
}

/* Room for one more connection of the route's cluster (max_connections),
 * taken. When the cluster is full, one of this engine's idle connections of
 * the cluster (to another endpoint: pool_take found none to this one) is
 * closed to make room, as a host that has no connection must get one. A
 * request already waiting tries without counting another overflow. */
static int cx_room(h1_engine *e, h1_conn *c)
{
    gv_cluster *g = c->route.gcl;
    unsigned i;

    if (c->gv_pending && atomic_load_explicit(&g->cx_active, memory_order_relaxed) >=
                             (int64_t)c->route.gcfg->max_connections) {
        /* still full: look for an idle one below */
    } else if (g_acquire(e, g, c->route.gcfg, GV_L_CX)) {
        return 1;
    }
    for (i = 0; i < e->pool_slots; i++) {
        h1_pool *p;

        for (p = e->pools[i]; p; p = p->hnext) {
            h1_up *u;

            for (u = p->idle; u; u = u->pnext)
                if (u->gcl == g) {
                    e->st.pool_evictions++;
                    up_close(e, u, 0);
                    return g_acquire(e, g, c->route.gcfg, GV_L_CX);
                }
        }
    }
    return 0;
}

/* One attempt: a pooled or new upstream connection (within max_connections,
 * else wait), the head queued. R holds the request from r_start. */
static void begin_attempt(h1_engine *e, h1_conn *c)
{
    h1_up *u = pool_take(e, &c->route);

    if (!u && c->route.gcl && !cx_room(e, c)) {
        if (!c->gv_pending) {
            if (!g_acquire(e, c->route.gcl, c->route.gcfg, GV_L_PENDING)) {
                overflow(e, c, "upstream overflow: too many requests waiting for a connection\n");
                return;
            }
            c->gv_pending = 1;
        }
        cw_add(e, c);
        wait_for(e, c, W_CONN, total_left(e, c));
        return;
    }
    if (c->gv_pending) {
        g_release(e, c->route.gcl, GV_L_PENDING);
        c->gv_pending = 0;
    }
    /* The attempt starts (tracked before a connect can fail: its failure is
     * this attempt's outcome, and a retry must avoid this endpoint). */
    c->replayed = 0;
    c->gv_reported = 0;
    if (c->route.gep) {
        g_ep(e, c->route.gep, 1);
        atomic_fetch_add_explicit(&c->route.gep->rq_total, 1, memory_order_relaxed);
        c->gv_ep = 1;
        if (c->ntried < sizeof(c->tried) / sizeof(c->tried[0]))
            c->tried[c->ntried++] = c->route.ep_slot;
    }
    if (u) {
        e->st.pool_reuses++;
        cnt(e, c->route.cluster_block, H1_C_POOL_REUSED, 1);
    } else {
        if (!(u = up_connect(e, c))) {
            if (c->route.gcl)
                g_release(e, c->route.gcl, GV_L_CX);
            connect_failed(e, c, 0);
            return;
        }
        u->gcl = c->route.gcl;
    }
    c->up = u;
    u->owner = c;
    if (!c->retries)
        c->hold = u->reused || c->route.retry != NULL;
    cnt(e, c->route.cluster_block, H1_C_RQ_TOTAL, 1);
    if (send_request_head(e, c) == 0)
        c->mode = M_PROXY;
}

/* Proxies the routed request: the fault delay, the request breaker, then
 * the first attempt. */
static void begin_proxy(h1_engine *e, h1_conn *c)
{
    if (c->route.delay_ms && !c->delayed) {
        c->delayed = 1;
        c->rflags |= H1_F_DI;
        wait_for(e, c, W_DELAY, c->route.delay_ms);
        return;
    }
    if (c->route.gcl) {
        if (!g_acquire(e, c->route.gcl, c->route.gcfg, GV_L_RQ)) {
            overflow(e, c, "upstream overflow: too many requests in flight\n");
            return;
        }
        c->gv_rq = 1;
    }
    c->retries = c->ntried = 0;
    /* the total timeout runs from here (Envoy: the downstream request is
     * complete; a body still arriving counts too): connects, waits for a
     * connection, retries and backoffs are inside it */
    c->deadline = c->route.timeout_ms ? e->now + c->route.timeout_ms : 0;
    c->resp_fwd = 0;
    if (c->request_id) {
        uint64_t a = rng_next(e->rng), b = rng_next(e->rng);

        memcpy(c->r->rid, &a, 8);
        memcpy(c->r->rid + 8, &b, 8);
    }
    if (c->route.idle_timeout_ms) {
        c->last_io = e->now;
        timer_arm(e, &c->t2, T_STREAM, c->route.idle_timeout_ms);
    }
    begin_attempt(e, c);
}

/* The waiters for a connection try again (a connection closed, or the tick). */
static void cw_retry_all(h1_engine *e)
{
    h1_conn *c = e->cw_head, *next;

    e->cw_head = e->cw_tail = NULL;
    e->cw_kick = 0;
    for (; c; c = next) {
        next = c->cwnext;
        c->cwnext = c->cwprev = NULL;
        if (c->mode != M_WAIT || c->wait != W_CONN)
            continue;
        timer_cancel(e, &c->t);
        begin_attempt(e, c);
        if (c->mode != M_WAIT && c->mode != M_DEAD)
            pending_add(e, c);
    }
}

/* The keep-alive race: a reused connection died before answering while the
 * whole request is still in R; send it again on a fresh connection. Only
 * when that is safe: the upstream may have received it and acted on it
 * before the reset, so an idempotent method (as Go's transport), or a route
 * that allows retrying non-idempotent requests. */
static int can_replay(const h1_conn *c)
{
    return c->up && c->up->reused && !c->replayed && c->hold && !c->resp_byte && c->rs == RS_HEAD &&
           (c->idempotent || (c->route.retry && c->route.retry->non_idempotent));
}

static void replay(h1_engine *e, h1_conn *c)
{
    h1_up *u;

    up_close(e, c->up, 1);
    c->up = NULL;
    timer_cancel(e, &c->t);
    cnt(e, c->route.cluster_block, H1_C_KA_RACE, 1);
    e->st.ka_replays++;
    c->replayed = 1;
    if (!c->route.retry)
        c->hold = 0;
    if (c->route.gcl && !g_acquire(e, c->route.gcl, c->route.gcfg, GV_L_CX)) {
        /* no room for a fresh connection: as a reset before the response
         * (not reported to the outlier detector: not the endpoint's doing) */
        if (!try_retry(e, c, GV_ATTEMPT_RESET, 0))
            overflow(e, c, "upstream overflow: too many connections\n");
        return;
    }
    if (!(u = up_connect(e, c))) {
        if (c->route.gcl)
            g_release(e, c->route.gcl, GV_L_CX);
        connect_failed(e, c, 0);
        return;
    }
    u->gcl = c->route.gcl;
    c->up = u;
    u->owner = c;
    send_request_head(e, c);
}

/* The upstream closed, reset or refused the request. */
static void upstream_failed(h1_engine *e, h1_conn *c)
{
    if (can_replay(c)) {
        replay(e, c);
        return;
    }
    cnt(e, c->route.cluster_block, H1_C_RQ_RESET, 1);
    gov_report(e, c, GV_GATEWAY);
    if (c->rs != RS_HEAD) {
        /* Part of the response is downstream already: the only honest
         * ending left is a reset. */
        c->rflags |= H1_F_UC;
        conn_end(e, c, END_ABORT, 0);
        return;
    }
    if (try_retry(e, c, GV_ATTEMPT_RESET, 0))
        return;
    reply_error(e, c, 503, "Service Unavailable", "upstream closed the connection before responding\n",
                H1_F_UC, 0);
}

static void bad_gateway(h1_engine *e, h1_conn *c, const char *why)
{
    char body[160];
    size_t n = strlen(why);

    if (n > sizeof(body) - 32)
        n = sizeof(body) - 32;
    memcpy(body, "invalid upstream response: ", 27);
    memcpy(body + 27, why, n);
    body[27 + n] = '\n';
    body[28 + n] = 0;
    if (c->rs != RS_HEAD) {
        c->rflags |= H1_F_UPE;
        conn_end(e, c, END_ABORT, 0);
        return;
    }
    reply_error(e, c, 502, "Bad Gateway", body, H1_F_UPE, 0);
}

/* Makes room at the end of R for a read: 1 when there is some. */
static int r_room(h1_engine *e, h1_conn *c)
{
    uint32_t keep;

    if (c->r_len < e->cap)
        return 1;
    if (!txq_empty(&c->r->q))
        return 0;
    keep = c->hold ? c->r_start : c->r_pos;
    if (keep == 0 && c->hold) {
        /* The request outgrew the buffer: no replay for it. */
        c->hold = 0;
        keep = c->r_pos;
    }
    if (keep == 0)
        return 0;
    memmove(c->r->data, c->r->data + keep, c->r_len - keep);
    c->r_len -= keep;
    c->r_pos -= keep;
    c->r_start = c->r_start > keep ? c->r_start - keep : 0;
    return 1;
}

/* Queues request body bytes already in R: 1 if it queued something or
 * finished the body, 0 when it needs more bytes, -1 when answered. */
static int rq_produce(h1_engine *e, h1_conn *c)
{
    h1_buf *r = c->r;

    if (c->rq_body == HTTP1_BODY_LENGTH) {
        uint64_t n = c->r_len - c->r_pos;

        if (!n)
            return 0;
        if (n > c->rq_left)
            n = c->rq_left;
        txq_add(&r->q, r->data + c->r_pos, (size_t)n);
        c->r_pos += (uint32_t)n;
        c->rq_left -= n;
        c->rq_bytes += n;
        if (!c->rq_left)
            c->rq_end = 1;
        return 1;
    }
    if (c->rq_body == HTTP1_BODY_CHUNKED) {
        http1_span sp[TXQ_SPANS];
        size_t ns = 0, i;
        int64_t k;

        if (c->r_len == c->r_pos)
            return 0;
        k = http1_chunked_decode(&r->ck, r->data + c->r_pos, c->r_len - c->r_pos, sp, TXQ_SPANS, &ns);
        if (k < 0) {
            /* The head went out already: the upstream must not take the
             * partial body for a request, hence the abort in reply_local
             * (or here, when its response is under way). */
            if (c->rs != RS_HEAD) {
                c->rflags |= H1_F_DPE;
                conn_end(e, c, END_ABORT, 0);
            } else {
                reply_bad_request(e, c, &r->ck.err);
            }
            return -1;
        }
        for (i = 0; i < ns; i++) {
            txq_add_chunk(&r->q, r->data + c->r_pos + sp[i].off, sp[i].len);
            c->rq_bytes += sp[i].len;
        }
        c->r_pos += (uint32_t)k;
        if (r->ck.done) {
            txq_add(&r->q, LAST_CHUNK, sizeof(LAST_CHUNK));
            c->rq_end = 1;
        }
        return k > 0 || ns ? 1 : 0;
    }
    c->rq_end = 1;
    return 1;
}

/* Moves the request towards the upstream. Returns progress (0/1), or -1
 * when the exchange was ended or answered. */
/* The response-head timer of an attempt: its per-try timeout, cut to what
 * is left of the total (which started in begin_proxy). */
static uint32_t resp_ms(h1_engine *e, h1_conn *c)
{
    uint32_t ms = c->route.retry ? c->route.retry->per_try_timeout_ms : 0, left;

    if (!c->deadline)
        return ms;
    left = total_left(e, c);
    return !ms || left < ms ? left : ms;
}

static int rq_pump(h1_engine *e, h1_conn *c)
{
    h1_up *u = c->up;
    int prog = 0;

    for (;;) {
        if (!txq_empty(&c->r->q)) {
            uint64_t moved;
            int rc = txq_flush(u->fd, &u->s, &c->r->q, &moved);

            if (moved) {
                cnt(e, c->route.cluster_block, H1_C_TX_BYTES, moved);
                e->step_bytes += moved;
                c->last_io = e->now;
                prog = 1;
            }
            if (rc < 0) {
                txq_reset(&c->r->q);
                c->uq_w = 0;
                if (c->rs == RS_HEAD) {
                    upstream_failed(e, c);
                    return -1;
                }
                /* The response is under way: let it finish, the client
                 * connection closes after it (decided at its head). */
                c->rq = RQ_DONE;
                c->rq_broken = 1;
                return 1;
            }
            if (rc == 0)
                return prog;
            c->uq_w = 0;
        }
        if (c->rq_end) {
            c->rq = RQ_DONE;
            if (c->rec)
                c->t_sent_us = clock_us(CLOCK_MONOTONIC);
            if (c->rs == RS_HEAD)
                timer_arm(e, &c->t, T_RESP, resp_ms(e, c));
            return 1;
        }
        if (e->step_bytes > STEP_BYTES)
            return 1;
        {
            int rc = rq_produce(e, c);

            if (rc < 0)
                return -1;
            if (rc > 0)
                continue;
        }
        if (!c->s.rd || !r_room(e, c))
            return prog;
        {
            ssize_t k = sock_read(c->fd, &c->s, c->r->data + c->r_len, e->cap - c->r_len);

            if (k > 0) {
                c->r_len += (uint32_t)k;
                cnt(e, c->listener_block, H1_L_RX_BYTES, (uint64_t)k);
                prog = 1;
                continue;
            }
            if (k == IO_AGAIN)
                return prog;
            /* The client went away with its request unfinished. */
            c->rflags |= H1_F_DC;
            conn_end(e, c, k == 0 ? END_CLOSE : END_ABORT, 0);
            return -1;
        }
    }
}

/* Parses a response head at w_start and queues its rewrite. 1 when a head
 * was handled, 0 when incomplete, -1 when the exchange was ended/answered
 * (or turned into a tunnel). */
static int rs_head(h1_engine *e, h1_conn *c)
{
    h1_buf *w = c->w;
    const char *buf = w->data + c->w_start;
    int status, tunnel, close;
    rw_ctx ctx;
    int64_t n;
    char *out;
    int hlen = http1_parse_response(&w->p, buf, c->w_len - c->w_start);

    if (hlen == HTTP1_INCOMPLETE)
        return 0;
    if (hlen == HTTP1_ERROR) {
        bad_gateway(e, c, w->p.err.reason);
        return -1;
    }
    status = w->p.status;
    if (http1_response_framing(buf, status, w->p.minor_version, c->is_head, c->is_connect, w->p.headers,
                               w->p.num_headers, &w->f) < 0) {
        bad_gateway(e, c, w->f.err.reason);
        return -1;
    }
    cnt(e, c->route.cluster_block, H1_C_RQ_1XX - 1 + status_class(status), status_class(status) ? 1 : 0);
    if (status == 101 && !c->upgrade) {
        bad_gateway(e, c, "101 to a request without Upgrade");
        return -1;
    }
    rw_ctx_init(&ctx);
    ctx.version_minor = 1;
    if (status < 200 && status != 101) {
        /* Interim: forwarded as it comes (never to HTTP/1.0 clients, RFC
         * 9110 §15.2), then the next head is parsed. */
        if (c->minor) {
            n = rw_response(buf, &w->p, &w->f, c->route.resp_ops, &ctx, w->data + c->w_len, e->cap - c->w_len);
            if (n <= 0) {
                bad_gateway(e, c, "interim response head too large");
                return -1;
            }
            txq_add(&w->q, w->data + c->w_len, (size_t)n);
            cnt(e, c->listener_block, H1_L_RQ_1XX, 1);
            c->resp_fwd = 1;
        }
        c->w_start += (uint32_t)hlen;
        c->w_pos = c->w_start;
        http1_parser_reset(&w->p);
        return 1;
    }
    /* A final head: the attempt's outcome, and maybe a retry instead of it. */
    gov_report(e, c, status < 500 ? GV_OK : status >= 502 && status <= 504 ? GV_GATEWAY : GV_5XX);
    if (status >= 400 && try_retry(e, c, GV_ATTEMPT_STATUS, status))
        return -1;
    if (c->retries && status < 500 && c->route.gcl)
        atomic_fetch_add_explicit(&c->route.gcl->rq_retry_success, 1, memory_order_relaxed);
    c->hold = 0;
    tunnel = w->f.body == HTTP1_BODY_TUNNEL;
    if (tunnel && c->rq != RQ_DONE) {
        bad_gateway(e, c, "tunnel accepted before the request ended");
        return -1;
    }
    if (c->t.kind == T_RESP)
        timer_cancel(e, &c->t);
    c->status_sent = status;
    if (c->rec)
        c->upstream_us = clock_us(CLOCK_MONOTONIC) - (c->t_sent_us ? c->t_sent_us : c->t0_us);
    c->dechunk = w->f.body == HTTP1_BODY_CHUNKED && c->minor == 0;
    close = !tunnel && (!c->client_ka || e->draining || c->rq != RQ_DONE || c->rq_broken ||
                        w->f.body == HTTP1_BODY_UNTIL_CLOSE || c->dechunk || (c->is_connect && !tunnel));
    if (tunnel)
        ctx.connection = status == 101 ? RW_CONN_UPGRADE : RW_CONN_NONE;
    else if (close)
        ctx.connection = RW_CONN_CLOSE;
    else if (c->minor == 0)
        ctx.connection = RW_CONN_KEEP_ALIVE;
    if (c->dechunk) {
        ctx.flags = RW_DROP_TRANSFER_ENCODING;
    } else if (w->f.body == HTTP1_BODY_CHUNKED && te_plain_chunked(buf, &w->p, &w->f)) {
        ctx.flags = RW_DROP_TRANSFER_ENCODING;
        ctx.extra.ptr = TE_CHUNKED;
        ctx.extra.len = sizeof(TE_CHUNKED) - 1;
    }
    out = w->data + c->w_len;
    n = rw_response(buf, &w->p, &w->f, c->route.resp_ops, &ctx, out, e->cap - c->w_len);
    if (n < 0) {
        /* No room behind the bytes read: a spare buffer for the head. */
        if (!(c->x = buf_get(e))) {
            bad_gateway(e, c, "out of memory");
            return -1;
        }
        out = c->x->data;
        n = rw_response(buf, &w->p, &w->f, c->route.resp_ops, &ctx, out, e->cap);
        c->dq_x = 1;
    }
    if (n <= 0) {
        bad_gateway(e, c, "response head too large after rewrite");
        return -1;
    }
    txq_add(&w->q, out, (size_t)n);
    cnt(e, c->listener_block, H1_L_RQ_1XX - 1 + status_class(status), status_class(status) ? 1 : 0);
    c->client_close = (uint8_t)close;
    c->w_pos = c->w_start + (uint32_t)hlen;
    c->rs = RS_BODY;
    c->rs_body = w->f.body;
    c->rs_left = w->f.content_length;
    c->rs_end = w->f.body == HTTP1_BODY_NONE;
    if (w->f.body == HTTP1_BODY_CHUNKED)
        http1_chunked_init(&w->ck, &e->cfg.limits);
    if (tunnel) {
        /* Leftovers both ways, then the sockets go back to the caller. */
        txq_add(&w->q, w->data + c->w_pos, c->w_len - c->w_pos);
        c->w_pos = c->w_len;
        txq_add(&c->r->q, c->r->data + c->r_pos, c->r_len - c->r_pos);
        c->r_pos = c->r_len;
        timer_cancel(e, &c->t2);
        c->mode = M_TUNNEL;
        return -1;
    }
    /* Body bytes read with the head leave in the same write. */
    return rs_produce(e, c) < 0 ? -1 : 1;
}

/* Queues response body bytes already in W: 1 / 0 / -1 as rq_produce. */
static int rs_produce(h1_engine *e, h1_conn *c)
{
    h1_buf *w = c->w;
    uint64_t n = c->w_len - c->w_pos;

    switch (c->rs_body) {
    case HTTP1_BODY_LENGTH:
        if (!n)
            return 0;
        if (n > c->rs_left)
            n = c->rs_left;
        txq_add(&w->q, w->data + c->w_pos, (size_t)n);
        c->w_pos += (uint32_t)n;
        c->rs_left -= n;
        c->rs_bytes += n;
        if (!c->rs_left)
            c->rs_end = 1;
        return 1;
    case HTTP1_BODY_CHUNKED: {
        http1_span sp[TXQ_SPANS];
        size_t ns = 0, i;
        int64_t k;

        if (!n)
            return 0;
        k = http1_chunked_decode(&w->ck, w->data + c->w_pos, (size_t)n, sp, TXQ_SPANS, &ns);
        if (k < 0) {
            bad_gateway(e, c, w->ck.err.reason);
            return -1;
        }
        for (i = 0; i < ns; i++) {
            c->rs_bytes += sp[i].len;
            if (c->dechunk)
                txq_add(&w->q, w->data + c->w_pos + sp[i].off, sp[i].len);
            else
                txq_add_chunk(&w->q, w->data + c->w_pos + sp[i].off, sp[i].len);
        }
        c->w_pos += (uint32_t)k;
        if (w->ck.done) {
            if (!c->dechunk)
                txq_add(&w->q, LAST_CHUNK, sizeof(LAST_CHUNK));
            c->rs_end = 1;
        }
        return k > 0 || ns ? 1 : 0;
    }
    case HTTP1_BODY_UNTIL_CLOSE:
        if (!n)
            return 0;
        c->rs_bytes += n;
        txq_add(&w->q, w->data + c->w_pos, (size_t)n);
        c->w_pos = c->w_len;
        return 1;
    default:
        c->rs_end = 1;
        return 1;
    }
}

/* Makes room at the end of W for a read and returns how much to read. */
static uint32_t w_room(h1_engine *e, h1_conn *c)
{
    uint32_t keep, lim;

    if (!c->uq_w) {
        keep = c->rs == RS_HEAD ? c->w_start : c->w_pos;
        if (keep == c->w_len) {
            c->w_start = c->w_pos = c->w_len = 0;
        } else if (keep && (c->w_len == e->cap || c->rs == RS_HEAD)) {
            memmove(c->w->data, c->w->data + keep, c->w_len - keep);
            c->w_len -= keep;
            c->w_pos -= keep;
            c->w_start = c->w_start > keep ? c->w_start - keep : 0;
        }
    }
    lim = e->cap;
    if (c->rs == RS_HEAD && c->w_len + HEAD_READ < lim)
        lim = c->w_len + HEAD_READ;
    return lim - c->w_len;
}

/* Moves the response towards the client: progress 0/1, or -1 as rq_pump. */
static int rs_pump(h1_engine *e, h1_conn *c)
{
    h1_up *u = c->up;
    int prog = 0;

    for (;;) {
        if (!txq_empty(&c->w->q)) {
            uint64_t moved;
            int rc = txq_flush(c->fd, &c->s, &c->w->q, &moved);

            if (moved) {
                cnt(e, c->listener_block, H1_L_TX_BYTES, moved);
                e->step_bytes += moved;
                c->last_io = e->now;
                prog = 1;
            }
            if (rc < 0) {
                c->rflags |= H1_F_DC;
                conn_end(e, c, END_ABORT, 0);
                return -1;
            }
            if (rc == 0)
                return prog;
            if (c->dq_x) {
                buf_put(e, c->x);
                c->x = NULL;
                c->dq_x = 0;
            }
        }
        if (c->rs == RS_BODY && c->rs_end) {
            c->rs = RS_DONE;
            return 1;
        }
        if (c->rs == RS_DONE)
            return prog;
        if (e->step_bytes > STEP_BYTES)
            return 1;
        if (c->rs == RS_HEAD) {
            if (c->w_len > c->w_start) {
                int rc = rs_head(e, c);

                if (rc < 0)
                    return -1;
                if (rc > 0) {
                    prog = 1;
                    continue;
                }
            }
        } else {
            int rc = rs_produce(e, c);

            if (rc < 0)
                return -1;
            if (rc > 0)
                continue;
        }
        if (u->connecting || !u->s.rd)
            return prog;
        {
            uint32_t room = w_room(e, c);
            ssize_t k;

            if (!room)
                return prog;
            k = sock_read(u->fd, &u->s, c->w->data + c->w_len, room);
            if (k > 0) {
                c->w_len += (uint32_t)k;
                cnt(e, c->route.cluster_block, H1_C_RX_BYTES, (uint64_t)k);
                c->resp_byte = 1;
                if (!c->route.retry)
                    c->hold = 0;
                c->last_io = e->now;
                prog = 1;
                continue;
            }
            if (k == IO_AGAIN)
                return prog;
            if (k == 0 && c->rs == RS_BODY && c->rs_body == HTTP1_BODY_UNTIL_CLOSE) {
                c->rs_end = 1;
                u->s.hup = 1; /* not reusable */
                continue;
            }
            upstream_failed(e, c);
            return -1;
        }
    }
}

/* The response is complete and written. */
static void finish_exchange(h1_engine *e, h1_conn *c)
{
    h1_buf *w = c->w;
    int reuse = w->f.keep_alive && c->rq == RQ_DONE && !c->rq_broken && c->w_pos == c->w_len &&
                c->rs_body != HTTP1_BODY_UNTIL_CLOSE;

    timer_cancel(e, &c->t);
    if (c->rq_live)
        obs_end(e, c);
    if (reuse)
        up_release(e, c, 1);
    else if (c->up) {
        /* Unsent request bytes, or surplus response bytes: the connection
         * is out of step, a FIN would not tell the peer enough. */
        int clean = c->rq == RQ_DONE && !c->rq_broken && c->w_pos == c->w_len;

        up_close(e, c->up, !clean);
        c->up = NULL;
    }
    if (c->client_close)
        linger_close(e, c);
    else
        next_request(e, c);
}

static int proxy_step(h1_engine *e, h1_conn *c)
{
    h1_up *u = c->up;
    int prog = 0, rc;

    if (c->s.err) {
        /* The client reset: nobody is left to answer. */
        c->rflags |= H1_F_DC;
        conn_end(e, c, END_ABORT, 0);
        return 1;
    }
    if (u->connecting) {
        if (!u->s.wr && !u->s.err)
            return 0;
        /* A failed connect always reports EPOLLERR (tcp_poll shows sk_err);
         * EPOLLOUT without it is an established connection. */
        if ((u->s.err || u->s.hup) && fp_connect_result(u->fd) != 0) {
            connect_failed(e, c, 0);
            return 1;
        }
        /* (connected, then closed at once: the read finds it, UC) */
        u->connecting = 0;
        timer_cancel(e, &u->t);
        prog = 1;
    }
    if (c->rq != RQ_DONE) {
        rc = rq_pump(e, c);
        if (rc < 0 || c->mode != M_PROXY)
            return 1;
        prog |= rc;
    }
    rc = rs_pump(e, c);
    if (rc < 0 || c->mode != M_PROXY)
        return 1;
    prog |= rc;
    if (c->rs == RS_DONE) {
        finish_exchange(e, c);
        return 1;
    }
    return prog;
}

/* ---- the other modes ------------------------------------------------------------ */

/* A token from each of the route's rate-limit buckets (shared by the
 * workers); 0 when one had none (the tokens taken before it stay taken, as
 * Envoy's filters run one after the other). */
static int within_limits(h1_engine *e, const h1_route *rt)
{
    unsigned i;

    for (i = 0; i < sizeof(rt->limits) / sizeof(rt->limits[0]) && rt->limits[i].b; i++) {
        const gv_limit *l = &rt->limits[i];

        if (!gv_bucket_take(l->b, l->max_tokens, l->tokens_per_fill, l->fill_interval_ms, e->now))
            return 0;
    }
    return 1;
}

/* The decision's local response, after its fault delay when it has one. */
static void respond(h1_engine *e, h1_conn *c)
{
    if (c->route.delay_ms && !c->delayed) {
        c->delayed = 1;
        c->rflags |= H1_F_DI;
        wait_for(e, c, W_DELAY, c->route.delay_ms);
        return;
    }
    reply_local(e, c, c->route.status, c->route.reason.ptr ? c->route.reason.ptr : "", c->route.reason.len,
                c->route.headers, NULL, c->route.body, 0, 0);
}

static void start_request(h1_engine *e, h1_conn *c, uint32_t hlen)
{
    h1_buf *r = c->r;
    const char *buf = r->data + c->r_start;
    int rc;

    timer_cancel(e, &c->t);
    c->requests++;
    e->st.requests++;
    c->head_len = hlen;
    c->r_pos = c->r_start + hlen;
    c->minor = (uint8_t)r->p.minor_version;
    c->client_ka = 0;
    if (http1_request_framing(buf, r->p.method, r->p.minor_version, r->p.headers, r->p.num_headers, &r->f) < 0) {
        if (e->obs)
            obs_begin(e, c, buf, &r->p, NULL);
        reply_bad_request(e, c, &r->f.err);
        return;
    }
    if (e->obs)
        obs_begin(e, c, buf, &r->p, &r->f);
    c->is_head = r->p.method.len == 4 && !memcmp(buf + r->p.method.off, "HEAD", 4);
    c->idempotent = (uint8_t)gv_method_idempotent(buf + r->p.method.off, (uint32_t)r->p.method.len);
    c->delayed = 0;
    c->is_connect = r->f.body == HTTP1_BODY_TUNNEL;
    c->upgrade = r->f.upgrade;
    c->client_ka = r->f.keep_alive;
    c->rq_body = r->f.body;
    c->rq_end = 0;
    c->client_close = 0;
    memset(&c->route, 0, sizeof(c->route));
    rc = e->cfg.route(e->cfg.cb_data, c->user, buf, &r->p, &r->f, &c->route);
    if (rc == 0 && c->rec) {
        uint32_t n = c->route.name.len < H1_REC_ROUTE ? c->route.name.len : H1_REC_ROUTE;

        if (n)
            memcpy(c->rec->route, c->route.name.ptr, n);
        c->rec->route_len = (uint16_t)n;
    }
    if (c->mode == M_DEAD) {
        /* closed from inside the callback */
        if (rc == 0 && e->cfg.release)
            e->cfg.release(e->cfg.cb_data, c->route.ref);
        return;
    }
    if (rc < 0) {
        reply_error(e, c, 500, "Internal Server Error", "route lookup failed\n", 0, 1);
        return;
    }
    c->routed = 1;
    c->rflags |= c->route.flags;
    if (c->route.limits[0].b && !within_limits(e, &c->route)) {
        static const char hdr[] = "x-envoy-ratelimited: true\r\n";
        rw_str h = { hdr, sizeof(hdr) - 1 }, none = { NULL, 0 };

        reply_local(e, c, 429, "Too Many Requests", 17, h, "local_rate_limited\n", none, H1_F_RL, 0);
        return;
    }
    if (c->route.action == H1_ACT_RESPOND) {
        respond(e, c);
        return;
    }
    if (c->route.action != H1_ACT_PROXY) {
        reply_error(e, c, 500, "Internal Server Error", "invalid route decision\n", 0, 1);
        return;
    }
    begin_proxy(e, c);
}

static int head_step(h1_engine *e, h1_conn *c)
{
    h1_buf *r;
    int prog = 0;

    if (!c->r) {
        if (!c->s.rd)
            return 0;
        if (!(c->r = buf_get(e))) {
            conn_end(e, c, END_ABORT, 0);
            return 1;
        }
        c->r_start = c->r_pos = c->r_len = 0;
    }
    r = c->r;
    for (;;) {
        ssize_t k;

        if (c->r_len > c->r_start) {
            int rc = http1_parse_request(&r->p, r->data + c->r_start, c->r_len - c->r_start);

            if (rc > 0) {
                start_request(e, c, (uint32_t)rc);
                return 1;
            }
            if (rc == HTTP1_ERROR) {
                if (e->obs && !c->rq_live)
                    obs_begin(e, c, NULL, NULL, NULL);
                reply_bad_request(e, c, &r->p.err);
                return 1;
            }
        }
        if (c->headers_timeout_ms && c->t.kind != T_HDRS && c->r_len > c->r_start)
            timer_arm(e, &c->t, T_HDRS, c->headers_timeout_ms);
        if (!c->s.rd)
            break;
        if (c->r_len == e->cap) {
            if (!c->r_start)
                break; /* cannot happen: the head limit is below the buffer */
            memmove(r->data, r->data + c->r_start, c->r_len - c->r_start);
            c->r_len -= c->r_start;
            c->r_start = c->r_pos = 0;
        }
        k = sock_read(c->fd, &c->s, r->data + c->r_len, e->cap - c->r_len);
        if (k > 0) {
            c->r_len += (uint32_t)k;
            cnt(e, c->listener_block, H1_L_RX_BYTES, (uint64_t)k);
            prog = 1;
            continue;
        }
        if (k == IO_AGAIN)
            break;
        conn_end(e, c, k == 0 ? END_CLOSE : END_ABORT, 0);
        return 1;
    }
    if (c->r_len == c->r_start) {
        buf_put(e, r);
        c->r = NULL;
    }
    return prog;
}

static int detect_step(h1_engine *e, h1_conn *c)
{
    char pk[FP_DETECT_MAX_BYTES];
    ssize_t n;
    int d, det;
    uint32_t off;

    if (!c->s.rd)
        return 0;
    n = recv(c->fd, pk, sizeof(pk), MSG_PEEK);
    if (n < 0) {
        if (errno == EINTR)
            return 1;
        c->s.rd = 0;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        conn_end(e, c, END_ABORT, 0);
        return 1;
    }
    if (n == 0) {
        conn_end(e, c, END_CLOSE, 0);
        return 1;
    }
    c->peeked = (int)n;
    d = fp_detect(pk, (size_t)n);
    if (d == FP_DETECT_NEED_MORE) {
        /* The bytes stay queued; the next segment raises a new edge. */
        c->s.rd = 0;
        return 0;
    }
    if (d == FP_DETECT_HTTP1) {
        cnt(e, c->listener_block, H1_L_DETECT_HTTP1, 1);
        begin_head(e, c);
        return 1;
    }
    off = d == FP_DETECT_HTTP2 ? H1_L_DETECT_HTTP2 : d == FP_DETECT_TLS ? H1_L_DETECT_TLS : H1_L_DETECT_OPAQUE;
    det = d == FP_DETECT_HTTP2 ? H1_DETACH_HTTP2 : d == FP_DETECT_TLS ? H1_DETACH_TLS : H1_DETACH_OPAQUE;
    cnt(e, c->listener_block, off, 1);
    conn_end(e, c, END_DETACH, det);
    return 1;
}

static int local_step(h1_engine *e, h1_conn *c)
{
    uint64_t moved;
    int rc = txq_flush(c->fd, &c->s, &c->w->q, &moved);

    if (moved) {
        cnt(e, c->listener_block, H1_L_TX_BYTES, moved);
        e->step_bytes += moved;
    }
    if (rc < 0) {
        conn_end(e, c, END_ABORT, 0);
        return 1;
    }
    if (rc == 0)
        return moved ? 1 : 0;
    if (c->rq_live)
        obs_end(e, c);
    if (c->close_after)
        linger_close(e, c);
    else
        next_request(e, c);
    return 1;
}

static int tunnel_step(h1_engine *e, h1_conn *c)
{
    h1_up *u = c->up;
    uint64_t m1 = 0, m2 = 0;
    int a = 1, b = 1;

    if (!txq_empty(&c->w->q))
        a = txq_flush(c->fd, &c->s, &c->w->q, &m1);
    if (a >= 0 && !txq_empty(&c->r->q))
        b = txq_flush(u->fd, &u->s, &c->r->q, &m2);
    cnt(e, c->listener_block, H1_L_TX_BYTES, m1);
    cnt(e, c->route.cluster_block, H1_C_TX_BYTES, m2);
    if (a < 0 || b < 0) {
        conn_end(e, c, END_ABORT, 0);
        return 1;
    }
    if (a == 1 && b == 1) {
        conn_end(e, c, END_DETACH, H1_DETACH_TUNNEL);
        return 1;
    }
    return m1 || m2;
}

static int linger_step(h1_engine *e, h1_conn *c)
{
    char tmp[4096];
    int k;

    for (k = 0; k < 16 && c->s.rd; k++) {
        ssize_t n = sock_read(c->fd, &c->s, tmp, sizeof(tmp));

        if (n > 0)
            continue;
        if (n == IO_AGAIN)
            return 0;
        conn_end(e, c, n == 0 ? END_CLOSE : END_ABORT, 0);
        return 1;
    }
    return c->s.rd;
}

/* Waiting to send (delay, backoff, a connection): the client is not read
 * (backpressure) unless it reset. */
static int wait_step(h1_engine *e, h1_conn *c)
{
    if (!c->s.err)
        return 0;
    c->rflags |= H1_F_DC;
    conn_end(e, c, END_ABORT, 0);
    return 1;
}

/* Serves c until it waits for an edge or used its share of this run.
 * Returns 1 when it should be served again without an edge. */
static int conn_step(h1_engine *e, h1_conn *c)
{
    int rounds;

    e->step_bytes = 0;
    for (rounds = 0; rounds < STEP_ROUNDS; rounds++) {
        int prog;

        switch (c->mode) {
        case M_DETECT: prog = detect_step(e, c); break;
        case M_HEAD: prog = head_step(e, c); break;
        case M_PROXY: prog = proxy_step(e, c); break;
        case M_LOCAL: prog = local_step(e, c); break;
        case M_TUNNEL: prog = tunnel_step(e, c); break;
        case M_LINGER: prog = linger_step(e, c); break;
        case M_WAIT: prog = wait_step(e, c); break;
        default: return 0;
        }
        if (!prog)
            return 0;
        if (e->step_bytes > STEP_BYTES)
            return c->mode != M_DEAD;
    }
    return c->mode != M_DEAD;
}

/* ---- timers firing ------------------------------------------------------------- */

static void fire(h1_engine *e, h1_timer *t, int kind)
{
    if (kind == T_CONNECT || kind == T_POOL) {
        h1_up *u = (h1_up *)((char *)t - offsetof(h1_up, t));
        h1_conn *c = u->owner;

        if (kind == T_POOL || !c) {
            e->st.pool_evictions++;
            up_close(e, u, 0);
            return;
        }
        connect_failed(e, c, 1);
        if (conn_step(e, c))
            pending_add(e, c);
        return;
    }
    if (kind == T_STREAM) {
        h1_conn *c = (h1_conn *)((char *)t - offsetof(h1_conn, t2));
        uint64_t idle = c->route.idle_timeout_ms;

        if (c->last_io + idle > e->now) {
            timer_arm(e, t, T_STREAM, (uint32_t)(c->last_io + idle - e->now));
            return;
        }
        c->rflags |= H1_F_SI;
        if (c->mode == M_PROXY && c->rs != RS_HEAD) {
            conn_end(e, c, END_ABORT, 0);
            return;
        }
        reply_error(e, c, 408, "Request Timeout", "stream idle timeout\n", 0, 1);
        if (conn_step(e, c))
            pending_add(e, c);
        return;
    }
    {
        h1_conn *c = (h1_conn *)((char *)t - offsetof(h1_conn, t));

        switch (kind) {
        case T_DETECT:
            cnt(e, c->listener_block, c->peeked ? H1_L_DETECT_OPAQUE : H1_L_DETECT_TIMEOUT, 1);
            conn_end(e, c, END_DETACH, c->peeked ? H1_DETACH_OPAQUE : H1_DETACH_TIMEOUT);
            return;
        case T_IDLE:
        case T_LINGER:
            conn_end(e, c, END_CLOSE, 0);
            return;
        case T_RESP:
            cnt(e, c->route.cluster_block, H1_C_RQ_TIMEOUT, 1);
            gov_report(e, c, GV_GATEWAY);
            if (!try_retry(e, c, GV_ATTEMPT_TIMEOUT, 0))
                reply_error(e, c, 504, "Gateway Timeout", "upstream response timeout\n", H1_F_UT, 0);
            if (conn_step(e, c))
                pending_add(e, c);
            return;
        case T_WAIT:
            if (c->wait == W_DELAY) {
                if (c->route.action == H1_ACT_RESPOND)
                    respond(e, c);
                else
                    begin_proxy(e, c);
            } else if (c->wait == W_BACKOFF && !(c->deadline && e->now >= c->deadline)) {
                begin_attempt(e, c);
            } else {
                /* the total timeout ran out waiting (backoff or a connection) */
                cw_unlink(e, c);
                if (c->route.retry && c->retries)
                    c->rflags |= H1_F_URX;
                reply_error(e, c, 504, "Gateway Timeout", "upstream response timeout\n", H1_F_UT, 0);
            }
            if (c->mode != M_WAIT && conn_step(e, c))
                pending_add(e, c);
            return;
        case T_HDRS:
            if (e->obs && !c->rq_live)
                obs_begin(e, c, NULL, NULL, NULL);
            reply_error(e, c, 408, "Request Timeout", "request headers timeout\n", 0, 1);
            if (conn_step(e, c))
                pending_add(e, c);
            return;
        default:
            return;
        }
    }
}

/* ---- public API ---------------------------------------------------------------- */

#define RECORDS_DEFAULT 4096u
#define RECORDS_MAX (1u << 20)

static void obs_free(h1_engine *e)
{
    free(e->skeys);
    free(e->sidx);
    free(e->recs);
    e->skeys = NULL;
    e->sidx = NULL;
    e->recs = NULL;
}

static int obs_init(h1_engine *e)
{
    double pct = e->cfg.trace_sampling;

    e->cfg.series_max = e->cfg.counters ? e->cfg.series_max : 0;
    if (series_init(e) < 0)
        return -1;
    e->cfg.series_max = e->series_max;
    if (e->cfg.records) {
        if (!e->cfg.records_cap)
            e->cfg.records_cap = RECORDS_DEFAULT;
        if (e->cfg.records_cap > RECORDS_MAX)
            e->cfg.records_cap = RECORDS_MAX;
        /* untouched until used: calloc's pages come from the kernel zeroed */
        if (!(e->recs = calloc(e->cfg.records_cap, sizeof(h1_record))))
            return -1;
    } else {
        e->cfg.records_cap = 0;
    }
    e->sample_all = pct >= 100.0;
    e->sample_thr = pct > 0.0 && pct < 100.0 ? (uint64_t)(pct / 100.0 * 18446744073709551616.0) : 0;
    e->obs = (uint8_t)(e->series || e->recs || e->cfg.tracing);
    return 0;
}

h1_engine *h1_engine_new(const h1_config *cfg)
{
    h1_engine *e;
    http1_limits def;
    int k;

    if (!cfg || !cfg->route) {
        errno = EINVAL;
        return NULL;
    }
    e = calloc(1, sizeof(*e));
    if (!e)
        return NULL;
    e->cfg = *cfg;
    http1_limits_init(&def);
    if (!e->cfg.limits.max_head_bytes)
        e->cfg.limits.max_head_bytes = def.max_head_bytes;
    if (e->cfg.limits.max_head_bytes > 0x7fffffffu)
        e->cfg.limits.max_head_bytes = 0x7fffffffu;
    if (!e->cfg.limits.max_headers)
        e->cfg.limits.max_headers = def.max_headers;
    if (!e->cfg.limits.max_line_bytes)
        e->cfg.limits.max_line_bytes = def.max_line_bytes;
    if (!e->cfg.counters)
        e->cfg.counters_len = 0;
    e->cap = e->cfg.buffer_bytes ? e->cfg.buffer_bytes : DEFAULT_BUFFER;
    if (e->cap < e->cfg.limits.max_head_bytes + 1024u)
        e->cap = e->cfg.limits.max_head_bytes + 1024u;
    if (e->cap > 0x7fff0000u) {
        free(e);
        errno = EINVAL;
        return NULL;
    }
    e->cfg.buffer_bytes = e->cap;
    e->hcap = e->cfg.limits.max_headers;
    e->buf_size = sizeof(h1_buf) + (size_t)e->hcap * sizeof(http1_header) + e->cap;
    for (k = 0; k < T_KINDS; k++)
        e->timers[k].head = e->timers[k].tail = NULL;
    rng_seed(e->rng);
    e->now = clock_ms();
    if (obs_init(e) < 0) {
        int err = errno;

        obs_free(e);
        free(e);
        errno = err;
        return NULL;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
        int err = errno;

        obs_free(e);
        free(e);
        errno = err;
        return NULL;
    }
    return e;
}

int h1_engine_fd(const h1_engine *e)
{
    return e->epfd;
}

/* Copies the option strings into c (inline when short). */
static int conn_copy_strs(h1_conn *c, const h1_conn_opts *o, const rw_str *peer_addr, const rw_str *odst)
{
    size_t need = (size_t)o->peer.len + o->proto.len + o->default_host.len + peer_addr->len + odst->len;
    char *p = c->strs;

    if (need > sizeof(c->strs)) {
        if (!(p = c->strs_heap = malloc(need)))
            return -1;
    }
#define COPY_STR(field)                                   \
    do {                                                  \
        c->field.len = o->field.len;                      \
        c->field.ptr = p;                                 \
        if (o->field.len)                                 \
            memcpy(p, o->field.ptr, o->field.len);        \
        p += o->field.len;                                \
    } while (0)
    COPY_STR(peer);
    COPY_STR(proto);
    COPY_STR(default_host);
#undef COPY_STR
    c->peer_addr.ptr = p;
    c->peer_addr.len = peer_addr->len;
    if (peer_addr->len)
        memcpy(p, peer_addr->ptr, peer_addr->len);
    p += peer_addr->len;
    c->odst.ptr = p;
    c->odst.len = odst->len;
    if (odst->len)
        memcpy(p, odst->ptr, odst->len);
    return 0;
}

h1_conn *h1_engine_add(h1_engine *e, int fd, void *user, const h1_conn_opts *o)
{
    struct epoll_event ev;
    h1_conn *c = e->free_conns;
    rw_str peer_addr = { NULL, 0 }, odst = { NULL, 0 };
    char pbuf[H1_REC_ADDR];
    fp_addr pa;

    if (c) {
        e->free_conns = c->znext;
        e->nfree_conns--;
    } else if (!(c = malloc(sizeof(*c)))) {
        errno = ENOMEM;
        return NULL;
    }
    memset(c, 0, sizeof(*c));
    c->t.kind = -1;
    c->t2.kind = -1;
    c->fd = fd;
    c->user = user;
    if (o) {
        c->detect = (uint8_t)!!o->detect;
        c->detect_ms = o->detect_ms;
        c->listener_block = o->listener_block;
        c->request_id = (uint8_t)!!o->request_id;
        c->headers_timeout_ms = o->headers_timeout_ms;
        if (e->recs) {
            /* the record's addresses, cut to H1_REC_ADDR */
            peer_addr = o->peer_addr;
            odst = o->original_dst;
            if (!peer_addr.len) {
                struct sockaddr_storage ss;
                socklen_t sl = sizeof(ss);

                if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0 && sa_to_addr(&ss, &pa) == 0) {
                    peer_addr.ptr = pbuf;
                    peer_addr.len = fmt_addr(&pa, pbuf);
                }
            }
            if (peer_addr.len > H1_REC_ADDR)
                peer_addr.len = H1_REC_ADDR;
            if (odst.len > H1_REC_ADDR)
                odst.len = H1_REC_ADDR;
        }
        if (conn_copy_strs(c, o, &peer_addr, &odst) < 0) {
            free(c);
            errno = ENOMEM;
            return NULL;
        }
    }
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int err = errno;

        free(c->strs_heap);
        free(c);
        errno = err;
        return NULL;
    }
    e->now = clock_ms();
    if (c->detect) {
        c->mode = M_DETECT;
        timer_arm(e, &c->t, T_DETECT, c->detect_ms);
    } else {
        begin_head(e, c);
    }
    c->anext = e->all;
    if (e->all)
        e->all->aprev = c;
    e->all = c;
    e->count++;
    return c;
}

static void note_events(sockst *s, uint32_t ev)
{
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        s->rd = 1;
    if (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))
        s->wr = 1;
    if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        s->hup = 1;
    if (ev & (EPOLLHUP | EPOLLERR))
        s->err = 1;
}

static void work_add(h1_conn **tail, h1_conn *c)
{
    if (c->inwork || c->mode == M_DEAD)
        return;
    c->inwork = 1;
    c->wnext = NULL;
    (*tail)->wnext = c;
    *tail = c;
}

static int hand_out(h1_engine *e, h1_event *out, int max)
{
    int k = 0;

    while (k < max && e->evq_len) {
        qev *q = &e->evq[e->evq_head++];

        e->evq_len--;
        if (!q->c)
            continue;
        out[k++] = q->ev;
        q->c->queued_ev = 0;
        zombie_conn(e, q->c);
        e->count--;
    }
    if (!e->evq_len)
        e->evq_head = 0;
    return k;
}

int h1_engine_run(h1_engine *e, h1_event *out, int max, int *more)
{
    struct epoll_event evs[BATCH];
    h1_conn head, *tail = &head, *c;
    int n, i, k, rc = 0;

    e->in_run = 1;
    e->st.runs++;
    e->now = clock_ms();
    head.wnext = NULL;
    /* Connections that yielded last time go first. */
    while ((c = e->pend_head)) {
        pending_unlink(e, c);
        work_add(&tail, c);
    }
    n = epoll_wait(e->epfd, evs, BATCH, 0);
    if (n < 0) {
        rc = errno == EINTR ? 0 : -errno;
        n = 0;
    }
    e->st.events += (uint64_t)n;
    for (i = 0; i < n; i++) {
        uintptr_t p = (uintptr_t)evs[i].data.ptr;

        if (p & TAG_UP) {
            h1_up *u = (h1_up *)(p & ~TAG_UP);

            if (u->dead)
                continue;
            note_events(&u->s, evs[i].events);
            if (u->owner) {
                work_add(&tail, u->owner);
            } else if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                /* An idle connection that speaks or closes is of no use. */
                e->st.pool_evictions++;
                up_close(e, u, 0);
            }
        } else {
            c = (h1_conn *)p;
            if (c->mode == M_DEAD)
                continue;
            note_events(&c->s, evs[i].events);
            work_add(&tail, c);
        }
    }
    for (c = head.wnext; c; c = c->wnext) {
        c->inwork = 0;
        if (c->mode == M_DEAD)
            continue;
        if (conn_step(e, c))
            pending_add(e, c);
    }
    if (e->cw_kick)
        cw_retry_all(e);
    k = rc < 0 ? rc : hand_out(e, out, max);
    flush_zombies(e);
    e->in_run = 0;
    if (more)
        *more = e->evq_len > 0 || e->pend_head != NULL;
    return k;
}

int h1_engine_expire(h1_engine *e, uint64_t now_ms)
{
    unsigned before = e->evq_len;
    int kind;

    now_ms = now_ms ? now_ms : clock_ms();
    if (now_ms > e->now)
        e->now = now_ms;
    for (kind = 0; kind < T_KINDS; kind++) {
        h1_timer *t;

        while ((t = e->timers[kind].head) && t->at <= now_ms) {
            timer_cancel(e, t);
            fire(e, t, kind);
        }
    }
    /* connections freed in other workers announce nothing here */
    if (e->cw_head)
        cw_retry_all(e);
    if (!e->in_run)
        flush_zombies(e);
    return e->evq_len > before || e->pend_head != NULL;
}

uint64_t h1_engine_now(const h1_engine *e)
{
    return e->now;
}

uint64_t h1_engine_next_deadline(const h1_engine *e)
{
    uint64_t at = 0;
    int kind;

    for (kind = 0; kind < T_KINDS; kind++) {
        const h1_timer *t = e->timers[kind].head;

        if (t && (!at || t->at < at))
            at = t->at;
    }
    return at;
}

void h1_engine_drain(h1_engine *e)
{
    h1_conn *c, *next;

    e->draining = 1;
    for (c = e->all; c; c = next) {
        next = c->anext;
        if (c->mode == M_HEAD && !c->r)
            conn_end(e, c, END_CLOSE, 0);
    }
    if (!e->in_run)
        flush_zombies(e);
}

void h1_engine_close_conn(h1_engine *e, h1_conn *c)
{
    if (c->mode == M_DEAD) {
        unsigned i;

        /* Ended, its report not handed out yet: withdraw the report. */
        if (!c->queued_ev)
            return;
        for (i = 0; i < e->evq_len; i++) {
            qev *q = &e->evq[e->evq_head + i];

            if (q->c != c)
                continue;
            if (q->ev.kind == H1_EV_DETACH) {
                fp_sock_abort(q->ev.fd);
                if (q->ev.upstream_fd >= 0)
                    fp_sock_abort(q->ev.upstream_fd);
            }
            q->c = NULL;
        }
        c->queued_ev = 0;
        e->count--;
        zombie_conn(e, c);
    } else {
        conn_end(e, c, END_SILENT, 0);
    }
    if (!e->in_run)
        flush_zombies(e);
}

unsigned h1_engine_count(const h1_engine *e)
{
    return e->count;
}

void h1_engine_get_stats(const h1_engine *e, h1_stats *st)
{
    *st = e->st;
    st->conns = e->count;
    st->buffers_free = e->nfree_bufs;
    st->buffers_total = e->nbufs;
}

void h1_engine_free(h1_engine *e)
{
    unsigned i;

    if (!e)
        return;
    while (e->all)
        conn_end(e, e->all, END_SILENT, 0);
    for (i = 0; i < e->evq_len; i++) {
        qev *q = &e->evq[e->evq_head + i];

        if (!q->c)
            continue;
        if (q->ev.kind == H1_EV_DETACH) {
            fp_sock_abort(q->ev.fd);
            if (q->ev.upstream_fd >= 0)
                fp_sock_abort(q->ev.upstream_fd);
        }
        zombie_conn(e, q->c);
    }
    e->evq_len = 0;
    for (i = 0; i < e->pool_slots; i++) {
        while (e->pools[i]) {
            h1_pool *p = e->pools[i];

            while (p->idle)
                up_close(e, p->idle, 0);
            e->pools[i] = p->hnext;
            free(p);
        }
    }
    flush_zombies(e);
    while (e->free_conns) {
        h1_conn *c = e->free_conns;

        e->free_conns = c->znext;
        free(c);
    }
    while (e->free_ups) {
        h1_up *u = e->free_ups;

        e->free_ups = u->znext;
        free(u);
    }
    while (e->free_bufs) {
        h1_buf *b = e->free_bufs;

        e->free_bufs = b->next;
        free(b);
    }
    free(e->pools);
    free(e->evq);
    obs_free(e);
    close(e->epfd);
    free(e);
}
