/* test_h1proxy.c - csrc/h1proxy.c against real TCP on 127.0.0.1.
 *
 * Topology of every case:
 *
 *     client  <-- tcp pair -->  [h1 engine]  <-- tcp -->  upstream listener
 *
 * Everything runs in this thread: step() runs the engine once, serves the
 * scripted upstream (accept, read, answer through the case's handler) and
 * reads what the client received, then polls all of them for a moment when
 * nothing moved. Timeouts are driven through h1_engine_expire() with a
 * clock pushed forward, never by sleeping. Bounded by deadlines throughout.
 *
 *   ./test_h1proxy             the cases; last line "N passed, M failed"
 *   ./test_h1proxy -k NAME     only the cases whose name contains NAME
 *   ./test_h1proxy --bench [N] N keep-alive GETs through the engine, timed
 */
#define TESTKIT_GOTO_CHECKS 1
#include "testkit.h"

#include "h1proxy.h"
#include "sockops.h"

#include <stdatomic.h>
#include <sys/epoll.h>

/* ---- the world ------------------------------------------------------------------------ */

#define LB 100 /* listener counter block */
#define CB 200 /* cluster counter block */
#define MAXS 16

typedef struct sconn {
    int fd;
    char *in;
    size_t in_len, in_cap, consumed;
    int eof, nreq;
    /* a streamed answer: `stream_left` bytes of pattern stream `seed` */
    uint64_t stream_left, stream_off;
    uint32_t seed;
    int close_after_stream;
    uint64_t pat_checked; /* request body bytes verified against pattern 7 */
    int pat_bad;
} sconn;

typedef struct world world;
typedef void (*handler_fn)(world *w, sconn *s);

struct world {
    h1_engine *e;
    h1_config cfg;
    uint64_t counters[512];
    int lfd;
    fp_addr up_addr;
    sconn *sc[MAXS];
    int nsc, accepts;
    handler_fn handler;
    const char *resp;        /* the simple handler's answer */
    /* client side */
    int cfd, pfd;
    h1_conn *conn;
    char *cin;
    size_t cin_len, cin_cap;
    int c_eof, c_err;
    uint64_t c_bytes;        /* streaming: response bytes received */
    int c_stream;            /* 1: do not keep client bytes, count and check pattern 9 */
    uint64_t c_body_skip;    /* streaming: bytes of head to skip before the pattern */
    int c_pat_bad;
    /* client streaming upload */
    uint64_t up_left, up_off;
    /* engine events */
    h1_event ev[16];
    int nev, closed, detached;
    h1_event last;
    h1_route route;
    int route_calls, releases, route_fail, retry_calls;
    uint64_t clock_push;     /* ms added to the clock for h1_engine_expire */
};

static void sc_free(sconn *s)
{
    if (s->fd >= 0)
        close(s->fd);
    free(s->in);
    free(s);
}

static int route_cb(void *cb_data, void *conn_user, const char *buf, const http1_parser *p,
                    const http1_framing *f, h1_route *out)
{
    world *w = cb_data;

    w->route_calls++;
    if (w->route_fail)
        return -1;
    *out = w->route;
    out->ref = w;
    return 0;
}

/* A retry names the same upstream (the world has one), with ep_slot + 1. */
static int retry_cb(void *cb_data, void *conn_user, void *ref, const uint32_t *tried, unsigned ntried,
                    h1_route *out)
{
    world *w = cb_data;

    w->retry_calls++;
    *out = w->route;
    out->ep_slot = ntried;
    out->ref = w;
    return 0;
}

static void release_cb(void *cb_data, void *ref)
{
    world *w = cb_data;

    if (ref == w)
        w->releases++;
}

/* A request-line limit for the next world_init (0: the default). */
static uint32_t g_max_line;
/* h1_conn_opts.headers_timeout_ms for the next world_init. */
static uint32_t g_hdrs_ms;
/* Observability settings for the next world_init (series_*, records*,
 * tracing, trace_sampling; the rest is ignored). */
static h1_config g_obs;
#define SERIES_BASE 256

static int world_init(world *w, uint32_t buffer, int detect)
{
    struct sockaddr_in sa;
    h1_conn_opts o;

    memset(w, 0, sizeof(*w));
    w->cfd = w->pfd = w->lfd = -1;
    w->cfg.buffer_bytes = buffer;
    w->cfg.limits.max_line_bytes = g_max_line;
    w->cfg.pool_max_idle = 8;
    w->cfg.pool_idle_ms = 60000;
    w->cfg.client_idle_ms = 60000;
    w->cfg.counters = w->counters;
    w->cfg.counters_len = 512;
    w->cfg.route = route_cb;
    w->cfg.release = release_cb;
    w->cfg.retry = retry_cb;
    w->cfg.cb_data = w;
    w->cfg.series_base = g_obs.series_base;
    w->cfg.series_max = g_obs.series_max;
    w->cfg.records = g_obs.records;
    w->cfg.records_cap = g_obs.records_cap;
    w->cfg.tracing = g_obs.tracing;
    w->cfg.trace_sampling = g_obs.trace_sampling;
    w->e = h1_engine_new(&w->cfg);
    if (!w->e)
        return -1;
    w->lfd = tk_listener(&sa, 64, 0, 0);
    if (w->lfd < 0)
        return -1;
    tk_set_nonblock(w->lfd, 1);
    w->up_addr.family = AF_INET;
    w->up_addr.port = ntohs(sa.sin_port);
    memcpy(w->up_addr.ip, &sa.sin_addr, 4);
    w->route.action = H1_ACT_PROXY;
    w->route.upstream = w->up_addr;
    w->route.cluster_block = CB;
    w->route.connect_timeout_ms = 1000;
    if (tk_tcp_pair(&w->cfd, &w->pfd, NULL) < 0)
        return -1;
    /* as fp_accept_batch does for the worker (else Nagle + delayed ACKs) */
    tk_set_nodelay(w->cfd);
    tk_set_nodelay(w->pfd);
    memset(&o, 0, sizeof(o));
    o.detect = detect;
    o.detect_ms = 500;
    o.listener_block = LB;
    o.peer.ptr = "10.1.2.3";
    o.peer.len = 8;
    o.proto.ptr = "http";
    o.proto.len = 4;
    o.default_host.ptr = "orig.example:80";
    o.default_host.len = 15;
    o.request_id = 1;
    o.headers_timeout_ms = g_hdrs_ms;
    w->conn = h1_engine_add(w->e, w->pfd, w, &o);
    if (!w->conn)
        return -1;
    return 0;
}

static void world_free(world *w)
{
    int i;

    if (w->e)
        h1_engine_free(w->e);
    /* A connection still registered was aborted by free; a detached one
     * was handed to us. */
    if (w->detached && w->last.fd >= 0)
        close(w->last.fd);
    if (w->detached && w->last.upstream_fd >= 0)
        close(w->last.upstream_fd);
    if (w->cfd >= 0)
        close(w->cfd);
    if (w->lfd >= 0)
        close(w->lfd);
    for (i = 0; i < w->nsc; i++)
        sc_free(w->sc[i]);
    free(w->cin);
}

static void buf_append(char **b, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;

        while (c < *len + n + 1)
            c *= 2;
        *b = realloc(*b, c);
        *cap = c;
    }
    memcpy(*b + *len, p, n);
    *len += n;
    (*b)[*len] = 0;
}

static void send_all(int fd, const char *p, size_t n)
{
    double dl = tk_now() + 5;

    while (n && tk_now() < dl) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);

        if (k > 0) {
            p += k;
            n -= (size_t)k;
        } else if (k < 0 && errno != EAGAIN && errno != EINTR) {
            return;
        } else {
            tk_sleep_ms(1);
        }
    }
}

static void sc_send(sconn *s, const char *str)
{
    send_all(s->fd, str, strlen(str));
}

/* Where the request starting at `from` ends (head + body), or 0 if it has
 * not arrived whole. Understands Content-Length and our re-framed chunked
 * bodies (no extensions, no trailers). */
static size_t req_end(const char *b, size_t len, size_t from)
{
    const char *h = strstr(b + from, "\r\n\r\n"), *cl, *te;
    size_t he;

    if (!h)
        return 0;
    he = (size_t)(h - b) + 4;
    cl = strcasestr(b + from, "\ncontent-length:");
    te = strcasestr(b + from, "\ntransfer-encoding: chunked");
    if (cl && cl < h) {
        size_t n = strtoul(cl + 16, NULL, 10);

        return he + n <= len ? he + n : 0;
    }
    if (te && te < h) {
        size_t pos = he;

        for (;;) {
            char *end;
            unsigned long n = strtoul(b + pos, &end, 16);
            const char *crlf = strstr(b + pos, "\r\n");

            if (!crlf)
                return 0;
            pos = (size_t)(crlf - b) + 2;
            if (n == 0)
                return pos + 2 <= len ? pos + 2 : 0;
            if (pos + n + 2 > len)
                return 0;
            pos += n + 2;
        }
    }
    return he;
}

/* The default handler: answers every complete request with w->resp. */
static void h_simple(world *w, sconn *s)
{
    size_t end;

    while (s->consumed < s->in_len && (end = req_end(s->in, s->in_len, s->consumed))) {
        s->consumed = end;
        s->nreq++;
        if (w->resp)
            sc_send(s, w->resp);
    }
}

static int step(world *w)
{
    int i, moved = 0, more = 0, n;
    struct pollfd pf[MAXS + 3];
    int np = 0;

    n = h1_engine_run(w->e, w->ev, 16, &more);
    for (i = 0; i < n; i++) {
        w->last = w->ev[i];
        w->nev++;
        if (w->ev[i].kind == H1_EV_CLOSED)
            w->closed++;
        else
            w->detached++;
    }
    moved |= n > 0;
    if (w->clock_push)
        h1_engine_expire(w->e, (uint64_t)(tk_now() * 1000) + w->clock_push);
    /* upstream: accept, read, answer */
    for (;;) {
        int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        sconn *s;

        if (fd < 0 || w->nsc >= MAXS) {
            if (fd >= 0)
                close(fd);
            break;
        }
        s = calloc(1, sizeof(*s));
        s->fd = fd;
        tk_set_nodelay(fd);
        w->sc[w->nsc++] = s;
        w->accepts++;
        moved = 1;
    }
    for (i = 0; i < w->nsc; i++) {
        sconn *s = w->sc[i];
        char b[65536];
        ssize_t k = -1;
        int got = 0;

        while (s->fd >= 0 && !s->eof && (k = recv(s->fd, b, sizeof(b), MSG_DONTWAIT)) != 0) {
            if (k < 0) {
                if (errno != EAGAIN && errno != EINTR)
                    s->eof = 1;
                break;
            }
            if (s->pat_checked || w->handler == NULL) {
                /* streaming upload: skip the head, then check the pattern */
                size_t off = 0;

                if (!s->pat_checked && s->in_len == 0) {
                    /* the head arrives whole in the first read */
                    const char *h = memmem(b, (size_t)k, "\r\n\r\n", 4);

                    off = h ? (size_t)(h - b) + 4 : (size_t)k;
                    buf_append(&s->in, &s->in_len, &s->in_cap, b, off);
                }
                if (!tk_pat_ok(7, s->pat_checked, (unsigned char *)b + off, (size_t)k - off))
                    s->pat_bad = 1;
                s->pat_checked += (uint64_t)k - off;
            } else {
                buf_append(&s->in, &s->in_len, &s->in_cap, b, (size_t)k);
            }
            got = 1;
        }
        if (k == 0)
            s->eof = 1;
        if (got) {
            moved = 1;
            if (w->handler)
                w->handler(w, s);
        }
        /* a streamed answer */
        while (s->fd >= 0 && s->stream_left) {
            size_t avail;
            const unsigned char *p = tk_pat_span(s->seed, s->stream_off, &avail);
            ssize_t m;

            if (avail > s->stream_left)
                avail = (size_t)s->stream_left;
            if (avail > 65536)
                avail = 65536;
            m = send(s->fd, p, avail, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (m <= 0)
                break;
            s->stream_left -= (uint64_t)m;
            s->stream_off += (uint64_t)m;
            moved = 1;
            if (!s->stream_left && s->close_after_stream) {
                close(s->fd);
                s->fd = -1;
            }
        }
    }
    /* client: upload, then read */
    while (w->cfd >= 0 && w->up_left) {
        size_t avail;
        const unsigned char *p = tk_pat_span(7, w->up_off, &avail);
        ssize_t m;

        if (avail > w->up_left)
            avail = (size_t)w->up_left;
        if (avail > 65536)
            avail = 65536;
        m = send(w->cfd, p, avail, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (m <= 0)
            break;
        w->up_left -= (uint64_t)m;
        w->up_off += (uint64_t)m;
        moved = 1;
    }
    for (;;) {
        char b[65536];
        ssize_t k;

        if (w->cfd < 0 || w->c_eof || w->c_err)
            break;
        k = recv(w->cfd, b, sizeof(b), MSG_DONTWAIT);
        if (k > 0) {
            moved = 1;
            if (w->c_stream) {
                size_t skip = 0;

                if (w->c_body_skip) {
                    skip = (size_t)k < w->c_body_skip ? (size_t)k : (size_t)w->c_body_skip;
                    buf_append(&w->cin, &w->cin_len, &w->cin_cap, b, skip);
                    w->c_body_skip -= skip;
                }
                if (!tk_pat_ok(9, w->c_bytes, (unsigned char *)b + skip, (size_t)k - skip))
                    w->c_pat_bad = 1;
                w->c_bytes += (uint64_t)k - skip;
            } else {
                buf_append(&w->cin, &w->cin_len, &w->cin_cap, b, (size_t)k);
            }
            continue;
        }
        if (k == 0)
            w->c_eof = 1;
        else if (errno != EAGAIN && errno != EINTR)
            w->c_err = errno;
        break;
    }
    if (moved || more)
        return 1;
    pf[np].fd = h1_engine_fd(w->e);
    pf[np++].events = POLLIN;
    pf[np].fd = w->lfd;
    pf[np++].events = POLLIN;
    if (w->cfd >= 0) {
        pf[np].fd = w->cfd;
        pf[np++].events = POLLIN | (w->up_left ? POLLOUT : 0);
    }
    for (i = 0; i < w->nsc; i++)
        if (w->sc[i]->fd >= 0) {
            pf[np].fd = w->sc[i]->fd;
            pf[np++].events = POLLIN | (w->sc[i]->stream_left ? POLLOUT : 0);
        }
    poll(pf, (nfds_t)np, 5);
    return 0;
}

#define WAIT(w, expr, ms)                                  \
    do {                                                   \
        double dl_ = tk_now() + (ms) / 1000.0;             \
        while (!(expr) && tk_now() < dl_)                  \
            step(w);                                       \
    } while (0)

/* Lets things settle for a few idle steps (nothing expected to happen). */
static void settle(world *w, int ms)
{
    double dl = tk_now() + ms / 1000.0;

    while (tk_now() < dl)
        step(w);
}

static int count_of(const char *hay, const char *needle)
{
    int n = 0;
    const char *p = hay;

    if (!hay)
        return 0;
    while ((p = strstr(p, needle))) {
        n++;
        p += strlen(needle);
    }
    return n;
}

static void client_send(world *w, const char *s)
{
    send_all(w->cfd, s, strlen(s));
}

static const char *cin(world *w)
{
    return w->cin ? w->cin : "";
}

static const char *sin0(world *w)
{
    return w->nsc && w->sc[0]->in ? w->sc[0]->in : "";
}

static uint64_t C(world *w, int block, int off)
{
    return w->counters[block + off];
}

static const char OK5[] = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";

/* ---- cases ---------------------------------------------------------------------------- */

static int case_get_keepalive(void)
{
    world w;
    h1_stats st;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    client_send(&w, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 2, 2000);
    client_send(&w, "GET /c HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 3, 2000);
    CHECK(count_of(cin(&w), "hello") == 3, "3 responses, got: %s", cin(&w));
    CHECK(w.accepts == 1, "one upstream connection, got %d", w.accepts);
    h1_engine_get_stats(w.e, &st);
    CHECK(st.pool_reuses == 2, "pool_reuses %llu", (unsigned long long)st.pool_reuses);
    CHECK(st.requests == 3 && st.upstream_connects == 1, "requests %llu", (unsigned long long)st.requests);
    CHECK(strstr(sin0(&w), "GET /a HTTP/1.1\r\nHost: x\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\n"
                           "x-request-id: "),
          "forwarded head: %s", sin0(&w));
    CHECK(count_of(sin0(&w), "x-request-id: ") == 3, "request ids");
    CHECK(strncmp(cin(&w), OK5, sizeof(OK5) - 1) == 0, "response as sent: %s", cin(&w));
    /* counters at their offsets */
    CHECK(C(&w, CB, H1_C_CX_TOTAL) == 1, "cx_total %llu", (unsigned long long)C(&w, CB, H1_C_CX_TOTAL));
    CHECK(C(&w, CB, H1_C_RQ_TOTAL) == 3, "rq_total");
    CHECK(C(&w, CB, H1_C_POOL_REUSED) == 2, "pool_reused");
    CHECK(C(&w, CB, H1_C_RQ_1XX + 1) == 3, "upstream 2xx");
    CHECK(C(&w, LB, H1_L_RQ_1XX + 1) == 3, "downstream 2xx");
    CHECK(C(&w, LB, H1_L_RX_BYTES) == 3 * 28, "rx bytes %llu", (unsigned long long)C(&w, LB, H1_L_RX_BYTES));
    CHECK(C(&w, LB, H1_L_TX_BYTES) == 3 * (sizeof(OK5) - 1), "tx bytes");
    CHECK(C(&w, CB, H1_C_RX_BYTES) == 3 * (sizeof(OK5) - 1), "upstream rx bytes");
    CHECK(C(&w, CB, H1_C_TX_BYTES) == w.sc[0]->in_len, "upstream tx bytes");
    CHECK(w.releases == 3 && w.route_calls == 3, "releases %d", w.releases);
    h1_engine_get_stats(w.e, &st);
    CHECK(st.buffers_free == st.buffers_total, "idle conn holds no buffer (%u/%u)", st.buffers_free,
          st.buffers_total);
    CHECK(st.upstream_idle == 1, "one idle upstream");
    /* the client closes: reported once */
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed == 1, 2000);
    CHECK(w.closed == 1 && h1_engine_count(w.e) == 0, "closed reported");
    DETAIL("%llu requests", (unsigned long long)st.requests);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_pipelining(void)
{
    world w;
    int ok = 0;
    const char *a, *b, *c;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = NULL;
    client_send(&w, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
                    "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, w.nsc && w.sc[0]->nreq >= 1, 2000);
    settle(&w, 30);
    /* one at a time: the second is not forwarded before the first ends */
    CHECK(w.nsc == 1 && w.sc[0]->nreq == 1, "only the first forwarded");
    sc_send(w.sc[0], "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr1");
    WAIT(&w, w.sc[0]->nreq == 2, 2000);
    sc_send(w.sc[0], "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr2");
    WAIT(&w, w.sc[0]->nreq == 3, 2000);
    sc_send(w.sc[0], "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr3");
    WAIT(&w, strstr(cin(&w), "r3"), 2000);
    a = strstr(cin(&w), "r1");
    b = strstr(cin(&w), "r2");
    c = strstr(cin(&w), "r3");
    CHECK(a && b && c && a < b && b < c, "in order: %s", cin(&w));
    CHECK(strstr(sin0(&w), "GET /1") < strstr(sin0(&w), "GET /2"), "upstream order");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_post_length(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello");
    settle(&w, 20);
    client_send(&w, " world");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    CHECK(strstr(sin0(&w), "Content-Length: 11\r\n") && strstr(sin0(&w), "\r\n\r\nhello world"), "body: %s",
          sin0(&w));
    client_send(&w, "GET /n HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 2, 2000);
    CHECK(w.accepts == 1, "reused");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_chunked_request(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5;ext=1\r\nhello\r\n0006\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    CHECK(!strstr(sin0(&w), "ext=") && !strstr(sin0(&w), "X-Trailer"), "no extension/trailer: %s", sin0(&w));
    CHECK(strstr(sin0(&w), "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
          "re-framed: %s", sin0(&w));
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_chunked_response(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n";
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "0\r\n\r\n"), 2000);
    CHECK(!strcmp(cin(&w), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"),
          "got: %s", cin(&w));
    /* an HTTP/1.0 client gets it de-chunked, then EOF */
    client_send(&w, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    WAIT(&w, w.c_eof, 2000);
    CHECK(strstr(cin(&w), "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabcde") ||
              strstr(cin(&w), "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabcde"),
          "de-chunked: %s", cin(&w));
    CHECK(strstr(w.sc[0]->in, "Host: orig.example:80\r\n"), "default host: %s", w.sc[0]->in);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static void h_continue(world *w, sconn *s)
{
    if (s->nreq == 0 && strstr(s->in, "\r\n\r\n")) {
        s->nreq = 1;
        sc_send(s, "HTTP/1.1 100 Continue\r\n\r\n");
    }
    if (s->nreq == 1 && req_end(s->in, s->in_len, 0)) {
        s->nreq = 2;
        sc_send(s, OK5);
    }
}

static int case_continue(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_continue;
    client_send(&w, "PUT /u HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "100 Continue"), 2000);
    CHECK(!strcmp(cin(&w), "HTTP/1.1 100 Continue\r\n\r\n"), "100 forwarded: %s", cin(&w));
    client_send(&w, "data");
    WAIT(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(strstr(cin(&w), "100 Continue\r\n\r\nHTTP/1.1 200 OK"), "then 200: %s", cin(&w));
    CHECK(C(&w, LB, H1_L_RQ_1XX) == 1 && C(&w, CB, H1_C_RQ_1XX) == 1, "1xx counted");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_no_body_statuses(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    /* HEAD: content-length announced, no body follows */
    w.resp = "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n";
    client_send(&w, "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "\r\n\r\n"), 2000);
    w.resp = "HTTP/1.1 204 No Content\r\n\r\n";
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "204"), 2000);
    w.resp = "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n";
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "304"), 2000);
    w.resp = OK5;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(!strcmp(cin(&w), "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
                           "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"
                           "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"),
          "got: %s", cin(&w));
    CHECK(w.accepts == 1, "one upstream connection");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_http10(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(strstr(cin(&w), "Connection: keep-alive\r\n") || strstr(cin(&w), "connection: keep-alive\r\n"),
          "keep-alive answered: %s", cin(&w));
    CHECK(strstr(sin0(&w), "GET /k HTTP/1.1\r\nHost: orig.example:80\r\n"), "forwarded as 1.1: %s", sin0(&w));
    client_send(&w, "GET /c HTTP/1.0\r\n\r\n");
    WAIT(&w, w.c_eof, 2000);
    CHECK(count_of(cin(&w), "hello") == 2 && w.c_eof, "close after: %s", cin(&w));
    CHECK(w.accepts == 1, "upstream kept");
    CHECK(w.closed == 0, "lingers until the client's EOF");
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed == 1, 2000);
    CHECK(w.closed == 1, "reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_local_response(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.route.action = H1_ACT_RESPOND;
    w.route.status = 404;
    w.route.reason.ptr = "Not Found";
    w.route.reason.len = 9;
    w.route.headers.ptr = "x-local: 1\r\n";
    w.route.headers.len = 12;
    w.route.body.ptr = "no route\n";
    w.route.body.len = 9;
    w.route.flags = H1_F_NR;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\nHEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "404") == 2, 2000);
    CHECK(!strcmp(cin(&w), "HTTP/1.1 404 Not Found\r\nx-local: 1\r\ncontent-length: 9\r\n\r\nno route\n"
                           "HTTP/1.1 404 Not Found\r\nx-local: 1\r\ncontent-length: 9\r\n\r\n"),
          "got: %s", cin(&w));
    CHECK(w.accepts == 0 && w.releases == 2, "no upstream, released");
    CHECK(C(&w, LB, H1_L_RQ_1XX + 3) == 2, "4xx counted");
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed, 2000);
    CHECK(w.last.flags & H1_F_NR, "NR flag reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

typedef struct bad_case {
    const char *req;
    const char *status;
} bad_case;

static int case_parse_errors(void)
{
    static char big_line[9000], big_head[70000];
    static const bad_case bc[] = {
        { "GET / HTTP/1.1\r\nHost: x\r\nBad Header: v\r\n\r\n", "HTTP/1.1 400 " },
        { "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n", "HTTP/1.1 501 " },
        { "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
          "HTTP/1.1 400 " },
        { big_line, "HTTP/1.1 414 " },
        { big_head, "HTTP/1.1 431 " },
        { "GET / HTTP/1.2\r\nHost: x\r\n\r\n", "HTTP/1.1 505 " },
    };
    world w;
    size_t i;
    int ok = 0;

    memset(&w, 0, sizeof(w));
    w.cfd = w.lfd = -1;
    strcpy(big_line, "GET /");
    memset(big_line + 5, 'a', 8500);
    strcpy(big_line + 8505, " HTTP/1.1\r\nHost: x\r\n\r\n");
    strcpy(big_head, "GET / HTTP/1.1\r\nHost: x\r\n");
    for (i = strlen(big_head); i < 66000; i += 20)
        memcpy(big_head + i, "X-Filler: 01234567\r\n", 20);
    big_head[i] = 0;
    for (i = 0; i < TK_NELEM(bc); i++) {
        g_max_line = 8192; /* makes the 414 case cheap */
        CHECK(world_init(&w, 0, 0) == 0, "init");
        g_max_line = 0;
        w.handler = h_simple;
        w.resp = OK5;
        client_send(&w, bc[i].req);
        WAIT(&w, w.c_eof || w.c_err, 3000);
        CHECK(strncmp(cin(&w), bc[i].status, strlen(bc[i].status)) == 0, "case %zu: got %.80s", i, cin(&w));
        CHECK(strstr(cin(&w), "connection: close\r\n"), "case %zu closes", i);
        CHECK(w.accepts == 0 && w.route_calls == 0, "case %zu: nothing forwarded", i);
        close(w.cfd);
        w.cfd = -1;
        WAIT(&w, w.closed, 2000);
        CHECK(w.closed == 1 && (w.last.flags & H1_F_DPE), "case %zu reported", i);
        world_free(&w);
        memset(&w, 0, sizeof(w));
        w.cfd = w.lfd = -1;
    }
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_upstream_refused(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    close(w.lfd);
    w.lfd = tk_listener(&(struct sockaddr_in){ 0 }, 1, 0, 0); /* keep the poll set valid */
    tk_set_nonblock(w.lfd, 1);
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "\r\n\r\n") && strstr(cin(&w), "failure\n"), 2000);
    CHECK(strncmp(cin(&w), "HTTP/1.1 503 ", 13) == 0, "got: %s", cin(&w));
    CHECK(C(&w, CB, H1_C_CONNECT_FAIL) == 1, "connect_fail counted");
    /* keep-alive survives a local 503 */
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "503") == 2, 2000);
    CHECK(count_of(cin(&w), "503") == 2 && !w.c_eof, "second answer");
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed, 2000);
    CHECK(w.last.flags & H1_F_UF, "UF reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_upstream_timeout(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.route.timeout_ms = 200;
    w.handler = h_simple;
    w.resp = NULL; /* never answers */
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, w.nsc && w.sc[0]->nreq == 1, 2000);
    settle(&w, 20);
    CHECK(cin(&w)[0] == 0, "nothing yet");
    w.clock_push = 1000; /* time flies */
    WAIT(&w, strstr(cin(&w), "timeout\n"), 2000);
    CHECK(strncmp(cin(&w), "HTTP/1.1 504 ", 13) == 0, "got: %s", cin(&w));
    CHECK(C(&w, CB, H1_C_RQ_TIMEOUT) == 1, "timeout counted");
    WAIT(&w, w.sc[0]->eof, 2000);
    CHECK(w.sc[0]->eof, "upstream closed");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static void h_close(world *w, sconn *s)
{
    if (req_end(s->in, s->in_len, 0) && s->fd >= 0) {
        close(s->fd);
        s->fd = -1;
    }
}

static int case_upstream_close_before(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_close;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "responding\n"), 2000);
    CHECK(strncmp(cin(&w), "HTTP/1.1 503 ", 13) == 0, "got: %s", cin(&w));
    CHECK(C(&w, CB, H1_C_RQ_RESET) == 1, "reset counted");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static void h_midbody(world *w, sconn *s)
{
    if (req_end(s->in, s->in_len, 0) && s->fd >= 0) {
        sc_send(s, "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial");
        tk_sock_abort(s->fd);
        s->fd = -1;
    }
}

static int case_upstream_close_midbody(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_midbody;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, w.c_eof || w.c_err, 2000);
    CHECK(w.c_eof || w.c_err, "client sees the end");
    CHECK(!strstr(cin(&w), " 503 ") && !strstr(cin(&w), " 502 "), "no second head: %s", cin(&w));
    WAIT(&w, w.closed, 2000);
    CHECK(w.closed == 1 && (w.last.flags & H1_F_UC), "UC reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* Answers, then closes the connection the moment the next request arrives
 * on it (before answering): the keep-alive race. */
static void h_race(world *w, sconn *s)
{
    size_t end;

    while (s->fd >= 0 && (end = req_end(s->in, s->in_len, s->consumed))) {
        s->consumed = end;
        s->nreq++;
        if (s->nreq == 2) {
            close(s->fd);
            s->fd = -1;
            return;
        }
        sc_send(s, OK5);
    }
}

static int case_keepalive_race(void)
{
    world w;
    h1_stats st;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_race;
    client_send(&w, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    client_send(&w, "PUT /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    WAIT(&w, count_of(cin(&w), "hello") == 2, 2000);
    CHECK(count_of(cin(&w), "hello") == 2 && !strstr(cin(&w), "503"), "second succeeded: %s", cin(&w));
    CHECK(w.accepts == 2, "fresh connection");
    CHECK(strstr(w.sc[1]->in, "PUT /2") && strstr(w.sc[1]->in, "\r\n\r\nabc"), "replayed whole");
    h1_engine_get_stats(w.e, &st);
    CHECK(st.ka_replays == 1 && C(&w, CB, H1_C_KA_RACE) == 1, "race counted");
    CHECK(C(&w, CB, H1_C_RQ_TOTAL) == 2, "replay counted once as a request");
    /* a POST is not sent twice: the upstream may have acted on it */
    client_send(&w, "POST /3 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    WAIT(&w, strstr(cin(&w), "responding\n"), 2000);
    CHECK(strstr(cin(&w), "HTTP/1.1 503 ") && w.accepts == 2, "POST not replayed: %s", cin(&w));
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static void h_upgrade(world *w, sconn *s)
{
    if (s->nreq == 0 && strstr(s->in, "\r\n\r\n")) {
        s->nreq = 1;
        sc_send(s, "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nSRV-EARLY");
    }
}

static int case_upgrade(void)
{
    world w;
    char b[64];
    ssize_t k;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_upgrade;
    client_send(&w, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nCLI-EARLY");
    WAIT(&w, w.detached, 2000);
    CHECK(w.detached == 1 && w.last.detach == H1_DETACH_TUNNEL, "tunnel detach");
    CHECK(w.last.fd == w.pfd && w.last.upstream_fd >= 0 && w.last.cluster_block == CB, "fds handed back");
    WAIT(&w, strstr(cin(&w), "SRV-EARLY") && strstr(sin0(&w), "CLI-EARLY"), 2000);
    CHECK(strstr(cin(&w), "101 Switching Protocols\r\n") && strstr(cin(&w), "\r\n\r\nSRV-EARLY"), "client: %s",
          cin(&w));
    CHECK(strstr(sin0(&w), "Upgrade: websocket\r\n") && strstr(sin0(&w), "\r\n\r\nCLI-EARLY"), "upstream: %s",
          sin0(&w));
    /* the sockets are ours now and still work */
    send_all(w.last.upstream_fd, "X", 1);
    WAIT(&w, strstr(w.sc[0]->in, "X"), 10);
    send_all(w.cfd, "ping", 4);
    tk_sleep_ms(20);
    k = recv(w.last.fd, b, sizeof(b), MSG_DONTWAIT);
    CHECK(k == 4 && !memcmp(b, "ping", 4), "client socket usable, got %zd", k);
    CHECK(w.releases == 1 && h1_engine_count(w.e) == 0, "released, unregistered");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int detect_case(const char *bytes, size_t n, int want, int counter)
{
    world w;
    char b[64];
    ssize_t k;
    int ok = 0;

    CHECK(world_init(&w, 0, 1) == 0, "init");
    if (n)
        send_all(w.cfd, bytes, n);
    else
        w.clock_push = 1000;
    WAIT(&w, w.detached, 2000);
    CHECK(w.detached == 1 && w.last.detach == want, "detach %d, want %d", w.last.detach, want);
    CHECK(w.last.fd == w.pfd && w.last.upstream_fd == -1, "fd handed back");
    CHECK(C(&w, LB, counter) == 1, "counter %d", counter);
    if (n) {
        tk_sleep_ms(5);
        k = recv(w.last.fd, b, sizeof(b), MSG_DONTWAIT);
        CHECK(k == (ssize_t)n && !memcmp(b, bytes, n), "bytes still in the socket (%zd)", k);
    }
    CHECK(h1_engine_count(w.e) == 0, "count 0");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_detect_h2(void)
{
    static const char p[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    return detect_case(p, sizeof(p) - 1, H1_DETACH_HTTP2, H1_L_DETECT_HTTP2);
}

static int case_detect_tls(void)
{
    static const char p[] = "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03";
    return detect_case(p, sizeof(p) - 1, H1_DETACH_TLS, H1_L_DETECT_TLS);
}

static int case_detect_opaque(void)
{
    static const char p[] = "SSH-2.0-OpenSSH_9.0\r\n";
    return detect_case(p, sizeof(p) - 1, H1_DETACH_OPAQUE, H1_L_DETECT_OPAQUE);
}

static int case_detect_timeout(void)
{
    return detect_case(NULL, 0, H1_DETACH_TIMEOUT, H1_L_DETECT_TIMEOUT);
}

static int case_detect_http1(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 1) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GE");
    settle(&w, 20);
    client_send(&w, "T / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(strstr(cin(&w), "hello"), "served after detection");
    CHECK(C(&w, LB, H1_L_DETECT_HTTP1) == 1, "counted");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* A stream of `total` pattern bytes each way through a 64 KiB buffer. */
static void h_stream(world *w, sconn *s)
{
    char head[128];

    if (s->nreq || !s->in || !strstr(s->in, "\r\n\r\n"))
        return;
    s->nreq = 1;
    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\ncontent-length: %llu\r\n\r\n",
             (unsigned long long)w->up_off + w->up_left);
    sc_send(s, head);
    s->seed = 9;
    s->stream_left = w->up_off + w->up_left;
}

static int case_large_body(void)
{
    const uint64_t total = 64 * MiB;
    world w;
    h1_stats st;
    char head[128];
    int ok = 0;

    tk_pat_init();
    CHECK(world_init(&w, 64 * KiB, 0) == 0, "init");
    w.handler = NULL; /* upstream: keep the head, check the body against pattern 7 */
    snprintf(head, sizeof(head), "POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: %llu\r\n\r\n",
             (unsigned long long)total);
    client_send(&w, head);
    w.up_left = total;
    WAIT(&w, w.nsc && w.sc[0]->pat_checked == total, 60000);
    CHECK(w.nsc == 1 && w.sc[0]->pat_checked == total && !w.sc[0]->pat_bad, "upload byte-exact (%llu)",
          w.nsc ? (unsigned long long)w.sc[0]->pat_checked : 0ull);
    /* now the download */
    w.handler = h_stream;
    w.up_off = total;
    w.up_left = 0;
    w.c_stream = 1;
    snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\ncontent-length: %llu\r\n\r\n", (unsigned long long)total);
    w.c_body_skip = strlen(head);
    h_stream(&w, w.sc[0]);
    WAIT(&w, w.c_bytes == total, 60000);
    CHECK(w.c_bytes == total && !w.c_pat_bad, "download byte-exact (%llu)", (unsigned long long)w.c_bytes);
    CHECK(!strcmp(cin(&w), head), "head: %s", cin(&w));
    h1_engine_get_stats(w.e, &st);
    CHECK(st.buffers_total <= 3, "flat memory: %u buffers", st.buffers_total);
    DETAIL("%u buffers of 64 KiB", st.buffers_total);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_half_close(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = NULL;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    shutdown(w.cfd, SHUT_WR);
    WAIT(&w, w.nsc && w.sc[0]->nreq == 1, 2000);
    settle(&w, 20);
    sc_send(w.sc[0], OK5);
    WAIT(&w, w.c_eof, 2000);
    CHECK(strstr(cin(&w), "hello") && w.c_eof, "response, then EOF: %s", cin(&w));
    WAIT(&w, w.closed, 2000);
    CHECK(w.closed == 1, "reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_idle_timeout_and_drain(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "hello"), 2000);
    h1_engine_drain(w.e);
    WAIT(&w, w.closed && w.c_eof, 2000);
    CHECK(w.closed == 1 && w.c_eof, "idle connection closed on drain");
    world_free(&w);

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.clock_push = 120000;
    WAIT(&w, w.closed, 2000);
    CHECK(w.closed == 1, "client idle timeout");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_close_conn_and_free(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = NULL;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, w.nsc && w.sc[0]->nreq == 1, 2000);
    h1_engine_close_conn(w.e, w.conn);
    CHECK(h1_engine_count(w.e) == 0 && w.releases == 1, "closed silently, route released");
    WAIT(&w, w.c_eof || w.c_err, 2000);
    CHECK(w.c_err == ECONNRESET, "client reset (%d)", w.c_err);
    settle(&w, 20);
    CHECK(w.nev == 0, "never reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_pool_eviction(void)
{
    world w;
    h1_stats st;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    /* the idle pooled connection is closed by the upstream: evicted at once */
    close(w.sc[0]->fd);
    w.sc[0]->fd = -1;
    h1_engine_get_stats(w.e, &st);
    WAIT(&w, (h1_engine_get_stats(w.e, &st), st.pool_evictions == 1), 2000);
    CHECK(st.pool_evictions == 1 && st.upstream_idle == 0 && st.upstream_open == 0, "evicted");
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 2, 2000);
    h1_engine_get_stats(w.e, &st);
    CHECK(w.accepts == 2 && st.ka_replays == 0, "fresh connection, no replay");
    /* pool idle timeout */
    w.clock_push = 120000;
    WAIT(&w, (h1_engine_get_stats(w.e, &st), st.pool_evictions == 2), 2000);
    CHECK(st.pool_evictions == 2 && C(&w, CB, H1_C_CX_DESTROY) == 2, "idle timeout");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_bad_gateway(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    w.handler = h_simple;
    w.resp = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!";
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "\n\r\n") && strstr(cin(&w), "response"), 2000);
    CHECK(strncmp(cin(&w), "HTTP/1.1 502 ", 13) == 0 && !strstr(cin(&w), "hello"), "got: %s", cin(&w));
    /* the client connection survives, on a new upstream connection */
    w.resp = OK5;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(strstr(cin(&w), "hello") && w.accepts == 2, "next request served");
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed, 2000);
    CHECK(w.last.flags & H1_F_UPE, "UPE reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}


/* ---- observability ---------------------------------------------------------------------- */

static uint64_t *series_at(world *w, int i)
{
    return w->counters + SERIES_BASE + i * H1_SERIES_SLOTS;
}

static uint64_t sum_range(const uint64_t *s, int from, int n)
{
    uint64_t t = 0;
    int i;

    for (i = 0; i < n; i++)
        t += s[from + i];
    return t;
}

/* The value of the LAST field `name` in text (name lower case, as sent),
 * copied into out; 0 when absent. */
static int hdr_last(const char *text, const char *name, char *out, size_t cap)
{
    char pat[64];
    const char *p, *last = NULL, *end;
    size_t n;

    snprintf(pat, sizeof(pat), "\r\n%s: ", name);
    for (p = text; (p = strstr(p, pat)); p++)
        last = p;
    if (!last)
        return 0;
    last += strlen(pat);
    end = strstr(last, "\r\n");
    n = end ? (size_t)(end - last) : strlen(last);
    if (n >= cap)
        n = cap - 1;
    memcpy(out, last, n);
    out[n] = 0;
    return 1;
}

static void obs_reset(void)
{
    memset(&g_obs, 0, sizeof(g_obs));
}

static int case_series(void)
{
    world w;
    uint64_t *s;
    int ok = 0, i;

    obs_reset();
    g_obs.series_base = SERIES_BASE;
    g_obs.series_max = 5;
    CHECK(world_init(&w, 0, 0) == 0, "init");
    obs_reset();
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    client_send(&w, "POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    WAIT(&w, count_of(cin(&w), "hello") == 2, 2000);
    client_send(&w, "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "5\r\n12345\r\n7\r\n1234567\r\n0\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 3, 2000);
    s = series_at(&w, 0);
    CHECK(s[H1_S_KEY] == H1_KEY_HTTP(LB, CB, 0, 200), "key %llx", (unsigned long long)s[0]);
    CHECK(s[H1_S_REQUESTS] == 3, "requests %llu", (unsigned long long)s[H1_S_REQUESTS]);
    CHECK(sum_range(s, H1_S_DURATION, H1_DURATION_BUCKETS) == 3, "duration buckets");
    CHECK(s[H1_S_DURATION_SUM] > 0, "duration sum");
    /* request bodies 0, 3, 12: buckets <=1, <=10, <=100 */
    CHECK(s[H1_S_REQUEST_BYTES] == 1 && s[H1_S_REQUEST_BYTES + 1] == 1 && s[H1_S_REQUEST_BYTES + 2] == 1,
          "request bytes buckets %llu %llu %llu", (unsigned long long)s[23], (unsigned long long)s[24],
          (unsigned long long)s[25]);
    CHECK(s[H1_S_REQUEST_SUM] == 15, "request sum %llu", (unsigned long long)s[H1_S_REQUEST_SUM]);
    CHECK(s[H1_S_RESPONSE_BYTES + 1] == 3 && s[H1_S_RESPONSE_SUM] == 15, "response bytes");
    for (i = 43; i < H1_SERIES_SLOTS; i++)
        CHECK(!s[i], "reserved slot %d", i);
    CHECK(!series_at(&w, 1)[0], "one series so far");
    /* a local 404 NR: cluster block 0, its own series */
    w.route.action = H1_ACT_RESPOND;
    w.route.status = 404;
    w.route.reason.ptr = "Not Found";
    w.route.reason.len = 9;
    w.route.body.ptr = "no route\n";
    w.route.body.len = 9;
    w.route.flags = H1_F_NR;
    client_send(&w, "GET /nr HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "404") == 1, 2000);
    s = series_at(&w, 1);
    CHECK(s[H1_S_KEY] == H1_KEY_HTTP(LB, 0, H1_F_NR, 404), "local key %llx", (unsigned long long)s[0]);
    CHECK(s[H1_S_REQUESTS] == 1 && s[H1_S_RESPONSE_SUM] == 9, "local series");
    /* upstream refused: 503 UF on the cluster */
    w.route.action = H1_ACT_PROXY;
    w.route.flags = 0;
    w.route.upstream.port = 1;
    client_send(&w, "GET /uf HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), " 503 ") == 1, 2000);
    CHECK(series_at(&w, 2)[0] == H1_KEY_HTTP(LB, CB, H1_F_UF, 503), "UF key %llx",
          (unsigned long long)series_at(&w, 2)[0]);
    /* a parse error: 400 DPE, no cluster, and the connection closes */
    client_send(&w, "GET / HTTP/1.1\r\nBad Header: v\r\n\r\n");
    WAIT(&w, w.closed, 2000);
    CHECK(series_at(&w, 3)[0] == H1_KEY_HTTP(LB, 0, H1_F_DPE, 400), "DPE key %llx",
          (unsigned long long)series_at(&w, 3)[0]);
    CHECK(w.counters[H1_G_SERIES_OVERFLOW] == 0, "no overflow yet");
    /* the TCP kind through the same allocator; then the cap */
    CHECK(h1_engine_series_slot(w.e, H1_KEY_TCP(LB, CB)) == SERIES_BASE + 4 * H1_SERIES_SLOTS, "tcp slot");
    CHECK(h1_engine_series_slot(w.e, H1_KEY_TCP(LB, CB)) == SERIES_BASE + 4 * H1_SERIES_SLOTS, "same slot");
    CHECK(h1_engine_series_slot(w.e, H1_KEY_HTTP(LB, CB, 0, 200)) == SERIES_BASE, "http slot");
    CHECK(h1_engine_series_slot(w.e, H1_KEY_TCP(LB, 0)) == -1, "past the cap");
    CHECK(w.counters[H1_G_SERIES_OVERFLOW] == 1, "overflow counted");
    CHECK(h1_engine_series_slot(w.e, 0) == -1, "key 0");
    ok = 1;
out:
    world_free(&w);
    obs_reset();
    return ok;
}

static int route_none(void *cb_data, void *conn_user, const char *buf, const http1_parser *p,
                      const http1_framing *f, h1_route *out)
{
    return -1;
}

static int case_series_adopt(void)
{
    uint64_t ctr[1024];
    h1_config cfg;
    h1_engine *e = NULL, *e2 = NULL;
    int ok = 0;
    int64_t a, b;

    memset(ctr, 0, sizeof(ctr));
    memset(&cfg, 0, sizeof(cfg));
    cfg.counters = ctr;
    cfg.counters_len = 1024;
    cfg.route = route_none;
    cfg.series_base = 1024 - 3 * H1_SERIES_SLOTS;
    cfg.series_max = 100; /* clamped to the 3 that fit */
    e = h1_engine_new(&cfg);
    CHECK(e, "new");
    a = h1_engine_series_slot(e, H1_KEY_TCP(16, 32));
    b = h1_engine_series_slot(e, H1_KEY_HTTP(16, 32, 0, 200));
    CHECK(a == cfg.series_base && b == a + H1_SERIES_SLOTS, "slots %lld %lld", (long long)a, (long long)b);
    ctr[a + H1_S_TCP_RX] = 77;
    h1_engine_free(e);
    e = NULL;
    /* a restarted worker: the series are adopted, counts kept */
    ctr[cfg.series_base + 2 * H1_SERIES_SLOTS + 5] = 99; /* junk in the unused series: zeroed on use */
    e2 = h1_engine_new(&cfg);
    CHECK(e2, "new again");
    CHECK(h1_engine_series_slot(e2, H1_KEY_HTTP(16, 32, 0, 200)) == b, "adopted http");
    CHECK(h1_engine_series_slot(e2, H1_KEY_TCP(16, 32)) == a && ctr[a + H1_S_TCP_RX] == 77, "adopted tcp");
    CHECK(h1_engine_series_slot(e2, H1_KEY_TCP(16, 48)) == b + H1_SERIES_SLOTS, "next one after");
    CHECK(ctr[b + H1_SERIES_SLOTS + 5] == 0 && ctr[b + H1_SERIES_SLOTS] == H1_KEY_TCP(16, 48), "zeroed, key");
    CHECK(h1_engine_series_slot(e2, H1_KEY_TCP(16, 64)) == -1 && ctr[H1_G_SERIES_OVERFLOW] == 1, "capped at 3");
    /* a base past the region: no series at all */
    cfg.series_base = 2000;
    h1_engine_free(e2);
    e2 = h1_engine_new(&cfg);
    CHECK(e2 && h1_engine_series_slot(e2, H1_KEY_TCP(16, 32)) == -1, "no area");
    ok = 1;
out:
    h1_engine_free(e);
    h1_engine_free(e2);
    return ok;
}

static h1_record *take1(world *w)
{
    h1_record *r = NULL;

    return h1_engine_records(w->e, &r, 1) == 1 ? r : NULL;
}

#define REC_STR(r, f, n) ((int)(r)->n), (r)->f

static int case_records(void)
{
    world w;
    h1_record *r = NULL, *rs[8];
    char rid[80], up[64];
    uint64_t now;
    int ok = 0;
    unsigned n;

    obs_reset();
    g_obs.records = 1;
    g_obs.records_cap = 2;
    CHECK(world_init(&w, 0, 0) == 0, "init");
    obs_reset();
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "POST /r?q=1 HTTP/1.1\r\nHost: svc.example:8080\r\nUser-Agent: curl/8\r\n"
                    "Content-Length: 4\r\n\r\nbody");
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    CHECK((r = take1(&w)), "one record");
    CHECK(!take1(&w), "only one");
    now = (uint64_t)time(NULL) * 1000000u;
    CHECK(r->start_us > now - 10000000u && r->start_us < now + 10000000u, "start %llu", (unsigned long long)r->start_us);
    CHECK(r->duration_us > 0 && r->duration_us < 5000000u, "duration");
    CHECK(r->status == 200 && r->flags == 0 && r->bytes_received == 4 && r->bytes_sent == 5, "numbers");
    CHECK(r->cluster_block == CB && r->listener_block == LB && r->minor == 1, "blocks");
    CHECK(r->method_len == 4 && !memcmp(r->method, "POST", 4), "method");
    CHECK(r->path_len == 6 && !memcmp(r->path, "/r?q=1", 6), "path %.*s", REC_STR(r, path, path_len));
    CHECK(r->authority_len == 16 && !memcmp(r->authority, "svc.example:8080", 16), "authority");
    CHECK(r->ua_len == 6 && !memcmp(r->ua, "curl/8", 6), "ua");
    CHECK(hdr_last(sin0(&w), "x-request-id", rid, sizeof(rid)), "rid forwarded");
    CHECK(r->rid_len == 36 && !memcmp(r->rid, rid, 36), "rid %.*s vs %s", REC_STR(r, rid, rid_len), rid);
    snprintf(up, sizeof(up), "127.0.0.1:%u", w.up_addr.port);
    CHECK(r->upstream_len == strlen(up) && !memcmp(r->upstream, up, strlen(up)), "upstream %.*s",
          REC_STR(r, upstream, upstream_len));
    CHECK(r->peer_len > 10 && !memcmp(r->peer, "127.0.0.1:", 10), "peer %.*s", REC_STR(r, peer, peer_len));
    CHECK(r->odst_len == 0 && !r->traced, "no odst, not traced");
    h1_engine_records_release(w.e, &r, 1);
    r = NULL;
    /* a received x-request-id is recorded as received; a long path is cut */
    {
        char req[1200];

        memset(req, 0, sizeof(req));
        strcpy(req, "GET /");
        memset(req + 5, 'p', 700);
        strcat(req, " HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\n\r\n");
        client_send(&w, req);
    }
    WAIT(&w, count_of(cin(&w), "hello") == 2, 2000);
    CHECK((r = take1(&w)), "record 2");
    CHECK(r->rid_len == 7 && !memcmp(r->rid, "abc-123", 7), "received rid");
    CHECK(r->path_len == H1_REC_PATH && r->ua_len == 0, "path cut to %u", r->path_len);
    h1_engine_records_release(w.e, &r, 1);
    r = NULL;
    /* cap 2: the third undrained request is dropped and counted */
    client_send(&w, "GET /1 HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 3, 2000);
    client_send(&w, "GET /2 HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 4, 2000);
    client_send(&w, "GET /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, count_of(cin(&w), "hello") == 5, 2000);
    CHECK(w.counters[H1_G_RECORDS_DROPPED] == 1, "dropped %llu", (unsigned long long)w.counters[H1_G_RECORDS_DROPPED]);
    n = h1_engine_records(w.e, rs, 8);
    CHECK(n == 2 && rs[0]->path[1] == '1' && rs[1]->path[1] == '2', "oldest first (%u)", n);
    h1_engine_records_release(w.e, rs, n);
    /* a local response, then a downstream reset mid-exchange (status 0, DC) */
    w.route.action = H1_ACT_RESPOND;
    w.route.status = 204;
    w.route.reason.ptr = "No Content";
    w.route.reason.len = 10;
    client_send(&w, "GET /local HTTP/1.0\r\n\r\n");
    WAIT(&w, strstr(cin(&w), " 204 "), 2000);
    CHECK((r = take1(&w)), "local record");
    CHECK(r->status == 204 && r->cluster_block == 0 && r->upstream_len == 0 && r->minor == 0, "local %u", r->status);
    h1_engine_records_release(w.e, &r, 1);
    r = NULL;
    ok = 1;
out:
    world_free(&w);
    obs_reset();
    return ok;
}

static int case_records_reset(void)
{
    world w;
    h1_record *r = NULL;
    int ok = 0;

    obs_reset();
    g_obs.records = 1;
    CHECK(world_init(&w, 0, 0) == 0, "init");
    obs_reset();
    w.handler = h_simple;
    w.resp = NULL; /* the upstream never answers */
    client_send(&w, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, w.nsc && w.sc[0]->in_len, 2000);
    tk_sock_abort(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed, 2000);
    CHECK((r = take1(&w)), "record of the reset request");
    CHECK(r->status == 0 && (r->flags & H1_F_DC), "status %u flags %x", r->status, r->flags);
    h1_engine_records_release(w.e, &r, 1);
    ok = 1;
out:
    world_free(&w);
    obs_reset();
    return ok;
}

/* The forwarded head of the last request, and its record. */
static int traced(world *w, const char *req, int nth, h1_record **r)
{
    client_send(w, req);
    WAIT(w, count_of(cin(w), "hello") == nth, 2000);
    *r = take1(w);
    return count_of(cin(w), "hello") == nth && *r;
}

static void hex8(const uint8_t *b, size_t n, char *out)
{
    size_t i;

    for (i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
}

static int case_trace(void)
{
    world w;
    h1_record *r = NULL;
    char v[100], span[24], tid[40], par[24], want[100];
    int ok = 0;

    obs_reset();
    g_obs.records = 1;
    g_obs.tracing = 1;
    g_obs.trace_sampling = 0;
    CHECK(world_init(&w, 0, 0) == 0, "init");
    obs_reset();
    w.handler = h_simple;
    w.resp = OK5;
    /* W3C: same trace, new span, flags kept; tracestate untouched; no B3 added */
    CHECK(traced(&w, "GET / HTTP/1.1\r\nHost: x\r\n"
                     "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
                     "tracestate: k=v\r\n\r\n", 1, &r), "w3c");
    CHECK(hdr_last(sin0(&w), "traceparent", v, sizeof(v)), "traceparent forwarded");
    hex8(r->span_id, 8, span);
    snprintf(want, sizeof(want), "00-4bf92f3577b34da6a3ce929d0e0e4736-%s-01", span);
    CHECK(!strcmp(v, want) && strcmp(span, "00f067aa0ba902b7"), "traceparent %s, span %s", v, span);
    CHECK(count_of(sin0(&w), "traceparent") == 1 && strstr(sin0(&w), "\r\ntracestate: k=v\r\n"), "one traceparent");
    CHECK(!strstr(sin0(&w), "x-b3-"), "no B3 added: %s", sin0(&w));
    hex8(r->trace_id, 16, tid);
    hex8(r->parent_id, 8, par);
    CHECK(r->traced && r->has_parent && r->sampled && !strcmp(tid, "4bf92f3577b34da6a3ce929d0e0e4736") &&
          !strcmp(par, "00f067aa0ba902b7"), "record %s %s", tid, par);
    h1_engine_records_release(w.e, &r, 1);
    /* B3 multi, 16-hex trace id: kept as received, padded in the record */
    CHECK(traced(&w, "GET / HTTP/1.1\r\nHost: x\r\nX-B3-TraceId: 463ac35c9f6413ad\r\n"
                     "X-B3-SpanId: a2fb4a1d1a96d312\r\nX-B3-Sampled: 1\r\n\r\n", 2, &r), "b3 multi");
    hex8(r->span_id, 8, span);
    hex8(r->trace_id, 16, tid);
    CHECK(!strcmp(tid, "0000000000000000463ac35c9f6413ad") && r->sampled, "trace %s", tid);
    CHECK(hdr_last(sin0(&w), "X-B3-TraceId", v, sizeof(v)) && !strcmp(v, "463ac35c9f6413ad"), "traceid %s", v);
    CHECK(hdr_last(sin0(&w), "X-B3-SpanId", v, sizeof(v)) && !strcmp(v, span), "spanid %s vs %s", v, span);
    CHECK(hdr_last(sin0(&w), "x-b3-parentspanid", v, sizeof(v)) && !strcmp(v, "a2fb4a1d1a96d312"), "parent %s", v);
    CHECK(hdr_last(sin0(&w), "X-B3-Sampled", v, sizeof(v)) && !strcmp(v, "1"), "sampled as received");
    CHECK(count_of(sin0(&w), "traceparent") == 1, "no traceparent added");
    h1_engine_records_release(w.e, &r, 1);
    /* B3 single with a parent: rewritten as {trace}-{new}-{sampled}-{incoming span} */
    CHECK(traced(&w, "GET / HTTP/1.1\r\nHost: x\r\n"
                     "b3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90\r\n\r\n", 3, &r),
          "b3 single");
    hex8(r->span_id, 8, span);
    snprintf(want, sizeof(want), "80f198ee56343ba864fe8b2a57d3eff7-%s-1-e457b5a2e4d86bd1", span);
    CHECK(hdr_last(sin0(&w), "b3", v, sizeof(v)) && !strcmp(v, want), "b3 %s want %s", v, want);
    hex8(r->parent_id, 8, par);
    CHECK(r->sampled && !strcmp(par, "e457b5a2e4d86bd1"), "b3 record");
    h1_engine_records_release(w.e, &r, 1);
    /* none, sampling 0: a new unsampled trace, W3C and B3 alike */
    CHECK(traced(&w, "GET / HTTP/1.1\r\nHost: x\r\ntraceparent: garbage\r\n\r\n", 4, &r), "new");
    hex8(r->span_id, 8, span);
    hex8(r->trace_id, 16, tid);
    snprintf(want, sizeof(want), "00-%s-%s-00", tid, span);
    CHECK(hdr_last(sin0(&w), "traceparent", v, sizeof(v)) && !strcmp(v, want), "new traceparent %s / %s", v, want);
    {
        const char *last = sin0(&w), *q;

        while ((q = strstr(last + 1, "GET / HTTP/1.1")))
            last = q;
        CHECK(!strncmp(last, "GET / HTTP/1.1\r\nHost: x\r\ntraceparent: 00-", 41) && count_of(last, "traceparent") == 1,
              "garbage replaced in place: %s", last);
    }
    CHECK(hdr_last(sin0(&w), "x-b3-traceid", v, sizeof(v)) && !strcmp(v, tid), "b3 traceid");
    CHECK(hdr_last(sin0(&w), "x-b3-spanid", v, sizeof(v)) && !strcmp(v, span), "b3 spanid");
    CHECK(hdr_last(sin0(&w), "x-b3-sampled", v, sizeof(v)) && !strcmp(v, "0"), "b3 sampled 0");
    CHECK(!r->has_parent && !r->sampled, "root, not sampled");
    h1_engine_records_release(w.e, &r, 1);
    ok = 1;
out:
    world_free(&w);
    obs_reset();
    return ok;
}

static int case_trace_sampling(void)
{
    world w;
    h1_record *r = NULL;
    char v[100], span[24], tid[40], want[100];
    int ok = 0, i, sampled = 0;

    obs_reset();
    g_obs.records = 1;
    g_obs.tracing = 1;
    g_obs.trace_sampling = 100.0;
    CHECK(world_init(&w, 0, 0) == 0, "init");
    obs_reset();
    w.handler = h_simple;
    w.resp = OK5;
    for (i = 1; i <= 20; i++) {
        CHECK(traced(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", i, &r), "request %d", i);
        hex8(r->span_id, 8, span);
        hex8(r->trace_id, 16, tid);
        snprintf(want, sizeof(want), "00-%s-%s-01", tid, span);
        CHECK(hdr_last(sin0(&w), "traceparent", v, sizeof(v)) && !strcmp(v, want), "%s / %s", v, want);
        CHECK(hdr_last(sin0(&w), "x-b3-sampled", v, sizeof(v)) && !strcmp(v, "1"), "b3 sampled 1");
        sampled += r->sampled;
        h1_engine_records_release(w.e, &r, 1);
    }
    CHECK(sampled == 20, "all sampled at 100%%");
    ok = 1;
out:
    world_free(&w);
    obs_reset();
    return ok;
}

/* ---- bench ---------------------------------------------------------------------------- */

static int bench(int n)
{
    world w;
    int i;
    double t0, c0, dt, dc;
    char req[] = "GET /bench HTTP/1.1\r\nHost: x\r\n\r\n";
    h1_record *recs[64];
    int obs = getenv("H1_BENCH_OBS") != NULL; /* series + records + tracing on */

    obs_reset();
    if (obs) {
        g_obs.series_base = SERIES_BASE;
        g_obs.series_max = 5;
        g_obs.records = 1;
        g_obs.tracing = 1;
        g_obs.trace_sampling = 1.0;
    }
    if (world_init(&w, 0, 0) != 0)
        return 1;
    obs_reset();
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, req);
    WAIT(&w, count_of(cin(&w), "hello") == 1, 2000);
    t0 = tk_now();
    c0 = tk_thread_cpu();
    for (i = 0; i < n; i++) {
        w.cin_len = 0;
        w.cin[0] = 0;
        client_send(&w, req);
        WAIT(&w, w.cin_len >= sizeof(OK5) - 1, 2000);
        if (w.cin_len < sizeof(OK5) - 1) {
            fprintf(stderr, "stalled at %d\n", i);
            break;
        }
        if (obs) {
            unsigned k = h1_engine_records(w.e, recs, 64);

            h1_engine_records_release(w.e, recs, k);
        }
    }
    dt = tk_now() - t0;
    dc = tk_thread_cpu() - c0;
    printf("%d requests in %.3fs (%.0f/s wall, whole loop incl. client+upstream %.1f us CPU each)\n", i, dt,
           i / dt, dc * 1e6 / i);
    world_free(&w);
    return 0;
}

/* ---- governance (h1proxy.h "Governance") ------------------------------------------------ */

static int g_seen;     /* requests the stateful handlers below have seen, all connections */
static const char BUSY[] = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nbusy";

/* The first request gets 503, later ones 200 (or nothing: g_hang_first). */
static int g_hang_first;
static void h_first_fails(world *w, sconn *s)
{
    size_t end;

    while (s->consumed < s->in_len && (end = req_end(s->in, s->in_len, s->consumed))) {
        s->consumed = end;
        s->nreq++;
        if (++g_seen == 1) {
            if (!g_hang_first)
                sc_send(s, BUSY);
        } else {
            sc_send(s, OK5);
        }
    }
}

static int upstream_requests(world *w)
{
    int i, n = 0;

    for (i = 0; i < w->nsc; i++)
        n += w->sc[i]->nreq;
    return n;
}

/* WAIT, with the engine's timers fired in real time (backoffs, timeouts). */
#define WAITX(w, expr, ms)                                 \
    do {                                                   \
        double dl_ = tk_now() + (ms) / 1000.0;             \
        while (!(expr) && tk_now() < dl_) {                \
            h1_engine_expire((w)->e, 0);                   \
            step(w);                                       \
        }                                                  \
    } while (0)

static gv_cluster g_gcl;
static gv_endpoint g_gep;
static gv_cluster_cfg g_gcfg;
static gv_retry g_retry;

static void gov_init(world *w, uint32_t retry_on, uint32_t non_idempotent)
{
    memset(&g_gcl, 0, sizeof(g_gcl));
    memset(&g_gep, 0, sizeof(g_gep));
    memset(&g_gcfg, 0, sizeof(g_gcfg));
    memset(&g_retry, 0, sizeof(g_retry));
    g_gcfg.max_connections = g_gcfg.max_pending_requests = GV_UNLIMITED;
    g_gcfg.max_requests = g_gcfg.max_retries = GV_UNLIMITED;
    g_gcfg.nhosts = 1;
    g_retry.num_retries = 2;
    g_retry.retry_on = retry_on;
    g_retry.backoff_base_ms = 1;
    g_retry.backoff_max_ms = 2;
    g_retry.non_idempotent = non_idempotent;
    g_retry.ncodes = 1;
    g_retry.codes[0] = 503;
    w->route.gcl = &g_gcl;
    w->route.gcfg = &g_gcfg;
    w->route.gep = &g_gep;
    w->route.retry = retry_on ? &g_retry : NULL;
    g_seen = 0;
    g_hang_first = 0;
}

#define LD(x) ((long long)atomic_load(&(x)))

static int case_retry_status(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    gov_init(&w, GV_RETRY_STATUS_CODES, 0);
    w.handler = h_first_fails;
    client_send(&w, "GET /r HTTP/1.1\r\nHost: x\r\n\r\n");
    WAITX(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(strncmp(cin(&w), OK5, sizeof(OK5) - 1) == 0, "the retry's answer only: %s", cin(&w));
    CHECK(upstream_requests(&w) == 2 && w.retry_calls == 1, "2 tries, got %d / %d", upstream_requests(&w),
          w.retry_calls);
    WAITX(&w, w.releases == 2, 1000);
    CHECK(w.releases == 2, "both decisions released (%d)", w.releases);
    CHECK(LD(g_gcl.rq_active) == 0 && LD(g_gcl.rq_retry_active) == 0 && LD(g_gep.rq_active) == 0,
          "breakers back to 0: rq %lld retry %lld ep %lld", LD(g_gcl.rq_active), LD(g_gcl.rq_retry_active),
          LD(g_gep.rq_active));
    CHECK(LD(g_gcl.rq_retry) == 1 && LD(g_gcl.rq_retry_success) == 1 && LD(g_gep.rq_total) == 2, "retry counters");
    CHECK(C(&w, CB, H1_C_RQ_TOTAL) == 2, "two upstream requests counted");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_retry_post_safety(void)
{
    world w;
    int ok = 0, pass;

    for (pass = 0; pass < 2; pass++) {
        /* pass 0: a POST the upstream got is not retried; pass 1: it is, when allowed */
        CHECK(world_init(&w, 0, 0) == 0, "init");
        gov_init(&w, GV_RETRY_STATUS_CODES, (uint32_t)pass);
        w.handler = h_first_fails;
        client_send(&w, "POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde");
        WAITX(&w, strstr(cin(&w), pass ? "hello" : "busy"), 2000);
        if (!pass) {
            CHECK(strncmp(cin(&w), BUSY, sizeof(BUSY) - 1) == 0, "the 503 as is: %s", cin(&w));
            CHECK(upstream_requests(&w) == 1 && w.retry_calls == 0, "not retried");
        } else {
            CHECK(strncmp(cin(&w), OK5, sizeof(OK5) - 1) == 0, "retried: %s", cin(&w));
            CHECK(upstream_requests(&w) == 2, "2 tries");
            CHECK(count_of(sin0(&w), "\r\n\r\nabcde") + (w.nsc > 1 ? count_of(w.sc[1]->in, "\r\n\r\nabcde") : 0) == 2,
                  "the body sent twice, whole");
        }
        world_free(&w);
    }
    return 1;
out:
    world_free(&w);
    return ok;
}

static int case_breaker_overflow(void)
{
    world w;
    int ok = 0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    gov_init(&w, 0, 0);
    g_gcfg.max_requests = 0;
    w.handler = h_simple;
    w.resp = OK5;
    client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    WAIT(&w, strstr(cin(&w), "in flight\n"), 2000);
    CHECK(strncmp(cin(&w), "HTTP/1.1 503 ", 13) == 0 && strstr(cin(&w), "x-fastproxy-overloaded: true\r\n"),
          "503 with the overload header: %s", cin(&w));
    CHECK(w.accepts == 0, "nothing sent upstream");
    CHECK(LD(g_gcl.rq_overflow) == 1 && LD(g_gcl.rq_active) == 0, "overflow counted, count not kept");
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed, 2000);
    CHECK(w.last.flags & H1_F_UO, "UO reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_per_try_timeout(void)
{
    world w;
    int ok = 0;
    double t0;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    gov_init(&w, GV_RETRY_5XX, 0);
    g_retry.per_try_timeout_ms = 100;
    g_hang_first = 1;
    w.handler = h_first_fails;
    t0 = tk_now();
    client_send(&w, "GET /t HTTP/1.1\r\nHost: x\r\n\r\n");
    WAITX(&w, strstr(cin(&w), "hello"), 2000);
    CHECK(strncmp(cin(&w), OK5, sizeof(OK5) - 1) == 0, "the retry answered: %s", cin(&w));
    CHECK(tk_now() - t0 >= 0.099, "not before the per-try timeout (%.3f s)", tk_now() - t0);
    CHECK(C(&w, CB, H1_C_RQ_TIMEOUT) == 1 && w.retry_calls == 1, "one timeout, one retry");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_headers_timeout(void)
{
    world w;
    int ok = 0;
    double t0;

    g_hdrs_ms = 100;
    CHECK(world_init(&w, 0, 0) == 0, "init");
    g_hdrs_ms = 0;
    t0 = tk_now();
    client_send(&w, "GET / HTTP/1.1\r\nHo");
    WAITX(&w, w.c_eof, 2000);
    CHECK(strncmp(cin(&w), "HTTP/1.1 408 ", 13) == 0 && strstr(cin(&w), "headers timeout"), "408: %s", cin(&w));
    CHECK(tk_now() - t0 >= 0.099, "not before the timeout");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_rate_limit(void)
{
    world w;
    gv_bucket bucket;
    int ok = 0, i;

    CHECK(world_init(&w, 0, 0) == 0, "init");
    memset(&bucket, 0, sizeof(bucket));
    w.route.limits[0].b = &bucket;
    w.route.limits[0].max_tokens = 2;
    w.route.limits[0].tokens_per_fill = 2;
    w.route.limits[0].fill_interval_ms = 3600000;
    w.handler = h_simple;
    w.resp = OK5;
    for (i = 0; i < 3; i++) {
        client_send(&w, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        WAIT(&w, count_of(cin(&w), "HTTP/1.1 ") == i + 1 && strstr(cin(&w), i < 2 ? "hello" : "limited\n"), 2000);
    }
    CHECK(count_of(cin(&w), "hello") == 2, "two answered: %s", cin(&w));
    CHECK(strstr(cin(&w), "HTTP/1.1 429 Too Many Requests\r\nx-envoy-ratelimited: true\r\n"), "429: %s", cin(&w));
    CHECK(upstream_requests(&w) == 2, "the third never went upstream");
    CHECK(atomic_load(&bucket.limited) == 1 && atomic_load(&bucket.allowed) == 2, "bucket counters");
    close(w.cfd);
    w.cfd = -1;
    WAIT(&w, w.closed, 2000);
    CHECK(w.last.flags & H1_F_RL, "RL reported");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static const tk_timed_case cases[] = {
    { "GET keep-alive x3, pool reuse, counters", case_get_keepalive },
    { "pipelining: 3 in one write, in order", case_pipelining },
    { "POST Content-Length in two pieces", case_post_length },
    { "chunked request re-framed, no ext/trailers", case_chunked_request },
    { "chunked response; HTTP/1.0 gets it de-chunked", case_chunked_response },
    { "100-continue then 200", case_continue },
    { "HEAD, 204, 304 without bodies", case_no_body_statuses },
    { "HTTP/1.0 keep-alive and close", case_http10 },
    { "local response (RESPOND), HEAD without body", case_local_response },
    { "parse errors 400/501/smuggling/414/431/505", case_parse_errors },
    { "upstream refused -> 503 UF, keep-alive", case_upstream_refused },
    { "upstream silent -> 504 UT", case_upstream_timeout },
    { "upstream closes before response -> 503 UC", case_upstream_close_before },
    { "upstream resets mid-body -> client reset", case_upstream_close_midbody },
    { "keep-alive race replayed on a fresh conn", case_keepalive_race },
    { "upgrade 101 -> DETACH TUNNEL, leftovers", case_upgrade },
    { "detect: HTTP/2 preface", case_detect_h2 },
    { "detect: TLS", case_detect_tls },
    { "detect: opaque", case_detect_opaque },
    { "detect: timeout", case_detect_timeout },
    { "detect: HTTP/1 in two pieces", case_detect_http1 },
    { "64 MiB up and down through 64 KiB buffers", case_large_body },
    { "client half-close after request", case_half_close },
    { "drain closes idle; client idle timeout", case_idle_timeout_and_drain },
    { "close_conn: RST, released, not reported", case_close_conn_and_free },
    { "pooled conn closed by upstream: evicted; idle timeout", case_pool_eviction },
    { "invalid response -> 502, connection survives", case_bad_gateway },
    { "series: layout, keys (local, UF, DPE), tcp, cap", case_series },
    { "series: clamp, adoption after restart, overflow", case_series_adopt },
    { "records: fields, request id, cut, drops, local", case_records },
    { "records: downstream reset -> status 0, DC", case_records_reset },
    { "trace: traceparent, B3 multi/single, new (0%)", case_trace },
    { "trace: sampling 100% on new traces", case_trace_sampling },
    { "retry: 503 then 200 on a retry, breakers back to 0", case_retry_status },
    { "retry: POST not retried unless non_idempotent", case_retry_post_safety },
    { "breaker: max_requests -> 503 UO + header", case_breaker_overflow },
    { "retry: per-try timeout then the retry answers", case_per_try_timeout },
    { "request headers timeout -> 408", case_headers_timeout },
    { "rate limit: 429 RL once the bucket is empty", case_rate_limit },
};

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "--bench"))
        return bench(argc > 2 ? atoi(argv[2]) : 20000);
    return tk_run_timed(cases, TK_NELEM(cases), 56, argc > 2 && !strcmp(argv[1], "-k") ? argv[2] : NULL);
}
