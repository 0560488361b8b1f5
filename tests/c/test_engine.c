/* test_engine.c - csrc/engine.c against real TCP on 127.0.0.1.
 *
 * Topology of every case (one or many connections, one engine):
 *
 *     peer A  <-- conn 1 -->  [ra | relay | rb]  <-- conn 2 -->  peer B
 *
 * The relays are driven ONLY through fp_engine_run(): the loop polls the
 * engine's epoll fd (and the peers' sockets), calls fp_engine_run() when the
 * fd is readable or the previous run said *more, and learns of every ending
 * from the finished relays it hands out. The peers are scripted non-blocking
 * sockets (send N bytes of a known pattern, answer after a request or an
 * EOF, half-close, close, reset, stop reading); what they receive is
 * compared with the sender's pattern byte for byte. Everything is bounded by
 * iteration counts and deadlines, and traffic stays on 127.0.0.1 (plus unix
 * socketpairs for the pipe-slot case).
 *
 *   ./test_engine                     the cases; last line "N passed, M failed"
 *   ./test_engine --bench [MiB] [rounds] [conns] [parallel]
 *                                     bulk through the engine vs direct, then
 *                                     the short-connection rate (see bench())
 *   ./test_engine --bench-short [conns] [parallel] [lt]
 *                                     only the short-connection part; the proxy
 *                                     is the main thread, so `strace -c` (no -f)
 *                                     counts the proxy's syscalls alone
 */
#define TESTKIT_GOTO_CHECKS 1 /* CHECK(cond, fmt, ...): reason to tk_why, goto out */
#include "testkit.h"

#include "engine.h"
#include "relay.h"
#include "sockops.h"

#include <linux/perf_event.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <sys/wait.h>

/* ---- connections and the world that drives them ---------------------------------- */

typedef struct conn {
    tk_peer pa, pb;
    int ra, rb;             /* the relay's sockets; -1 once the engine closed them */
    fp_relay r;
    int added;              /* fp_engine_add() succeeded */
    int how;                /* FP_END_* reported by fp_engine_run(), 0 before */
    int reports;            /* times fp_engine_run() handed it out (must end at 1) */
    int finished;           /* fp_engine_finish() was called */
} conn;

#define MAXC 256

typedef struct world {
    fp_engine *e;
    conn *c[MAXC];
    int nc;
    int more;               /* the last run said *more */
    unsigned long runs, more_runs, steps;
    unsigned max_pool;      /* largest pool size seen after a run */
    char viol[256];
} world;

/* Keeps the first violation seen. */
#define violation(w, ...) tk_keep_first((w)->viol, sizeof((w)->viol), __VA_ARGS__)

static int world_init(world *w, size_t chunk, unsigned pool_max)
{
    memset(w, 0, sizeof(*w));
    w->e = fp_engine_new(chunk, pool_max);
    return w->e ? 0 : -1;
}

/* Opens a connection: peer A <-> ra, rb <-> peer B, relay initialised (not
 * added). ab / bb: buffer sizes of the A-side and B-side pairs. */
static conn *conn_open(world *w, size_t chunk, const tk_bufs *ab, const tk_bufs *bb)
{
    conn *c;
    int pa, pb;
    uint32_t s = 1 + 7919u * (uint32_t)w->nc;

    if (w->nc >= MAXC)
        return NULL;
    c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ra = c->rb = -1;
    c->pa.fd = c->pb.fd = -1;
    if (tk_tcp_pair(&pa, &c->ra, ab) < 0) {
        free(c);
        return NULL;
    }
    if (tk_tcp_pair(&c->rb, &pb, bb) < 0) {
        close(pa);
        close(c->ra);
        free(c);
        return NULL;
    }
    tk_peer_init(&c->pa, pa, s, s + 333331u);
    tk_peer_init(&c->pb, pb, s + 333331u, s);
    fp_relay_init(&c->r, c->ra, c->rb, chunk);
    w->c[w->nc++] = c;
    return c;
}

static int conn_add(world *w, conn *c, int connecting)
{
    int rc = fp_engine_add(w->e, &c->r, connecting, c);

    if (rc == 0)
        c->added = 1;
    return rc;
}

static void conn_finish(world *w, conn *c)
{
    fp_engine_finish(w->e, &c->r);
    c->finished = 1;
    c->ra = c->rb = -1; /* closed now, or when the relay ended */
}

static void world_free(world *w)
{
    int i;

    for (i = 0; i < w->nc; i++) {
        conn *c = w->c[i];

        if (c->added && !c->how && !c->finished)
            conn_finish(w, c);
        fp_relay_free(&c->r);
        if (c->ra >= 0)
            close(c->ra);
        if (c->rb >= 0)
            close(c->rb);
        if (c->pa.fd >= 0)
            close(c->pa.fd);
        if (c->pb.fd >= 0)
            close(c->pb.fd);
        free(c);
    }
    w->nc = 0;
    if (w->e)
        fp_engine_free(w->e);
    w->e = NULL;
}

static void world_stats(const world *w, fp_engine_stats *st)
{
    fp_engine_get_stats(w->e, st);
}

/* One fp_engine_run(), its finished relays accounted. */
static void world_engine(world *w)
{
    fp_finished out[8];
    fp_engine_stats st;
    int more = 0, n, i;

    n = fp_engine_run(w->e, out, 8, &more);
    w->runs++;
    if (more)
        w->more_runs++;
    if (n < 0) {
        violation(w, "fp_engine_run: %s", strerror(-n));
        return;
    }
    for (i = 0; i < n; i++) {
        conn *c = out[i].relay->user;

        if (!c || &c->r != out[i].relay) {
            violation(w, "finished relay with a bad user pointer");
            continue;
        }
        if (c->finished)
            violation(w, "relay reported after fp_engine_finish()");
        if (++c->reports > 1)
            violation(w, "relay reported twice");
        if (out[i].how != c->r.eng_how)
            violation(w, "how %d but eng_how %d", out[i].how, c->r.eng_how);
        c->how = out[i].how;
        c->ra = c->rb = -1;
    }
    w->more = more;
    world_stats(w, &st);
    if (st.pool_size > w->max_pool)
        w->max_pool = st.pool_size;
}

/* One loop turn: peers' timeless actions, poll, engine, peers' I/O.
 * Returns 0 when nothing at all happened for timeout_ms. */
static int world_step(world *w, int timeout_ms)
{
    static struct pollfd pf[1 + 2 * MAXC];
    static tk_peer *who[1 + 2 * MAXC];
    int n = 1, i, k, ready, had_more = w->more;

    for (i = 0; i < w->nc; i++) {
        tk_peer_pre(&w->c[i]->pa);
        tk_peer_pre(&w->c[i]->pb);
    }
    pf[0].fd = fp_engine_fd(w->e);
    pf[0].events = POLLIN;
    pf[0].revents = 0;
    for (i = 0; i < w->nc; i++) {
        tk_peer *ps[2] = { &w->c[i]->pa, &w->c[i]->pb };

        for (k = 0; k < 2; k++) {
            short ev = tk_peer_events(ps[k]);

            if (!ev)
                continue;
            pf[n].fd = ps[k]->fd;
            pf[n].events = ev;
            pf[n].revents = 0;
            who[n++] = ps[k];
        }
    }
    w->steps++;
    ready = poll(pf, (nfds_t)n, had_more ? 0 : timeout_ms);
    if (ready < 0)
        ready = 0;
    if ((pf[0].revents & POLLIN) || had_more)
        world_engine(w);
    for (k = 1; k < n; k++) {
        if (!pf[k].revents)
            continue;
        tk_peer_recv(who[k]);
        tk_peer_send(who[k]);
    }
    return ready || had_more;
}

static int world_run(world *w, int (*done)(world *), double seconds)
{
    double end = tk_now() + seconds;
    unsigned long turns;

    for (turns = 0; turns < 20000000UL; turns++) {
        if (done(w))
            return 1;
        if (tk_now() > end)
            return 0;
        world_step(w, 100);
    }
    return 0;
}

/* Runs until nothing happens for quiet_ms. 1 on quiet, 0 on deadline. */
static int world_quiet(world *w, int quiet_ms, double seconds)
{
    double end = tk_now() + seconds;

    while (tk_now() < end)
        if (!world_step(w, quiet_ms))
            return 1;
    return 0;
}

static int all_done(world *w)
{
    int i;

    for (i = 0; i < w->nc; i++) {
        conn *c = w->c[i];

        if (!c->how && !c->finished)
            return 0;
        if (!tk_peer_done(&c->pa) || !tk_peer_done(&c->pb))
            return 0;
    }
    return 1;
}

static int all_ended(world *w)
{
    int i;

    for (i = 0; i < w->nc; i++)
        if (!w->c[i]->how && !w->c[i]->finished)
            return 0;
    return 1;
}

/* ---- case plumbing ----------------------------------------------------------------- */

/* What every case requires of the engine at its end. */
#define CHECK_ENGINE(w)                                                                            \
    do {                                                                                           \
        fp_engine_stats st_;                                                                       \
        CHECK(!(w)->viol[0], "violation: %s", (w)->viol);                                          \
        world_stats((w), &st_);                                                                    \
        CHECK(st_.spin_breaks == 0, "spin guard tripped %llu times",                               \
              (unsigned long long)st_.spin_breaks);                                                \
    } while (0)

/* DONE, every byte in order, EOF seen where the script expects it. */
static int conn_delivered(conn *c, char *msg, size_t len)
{
    if (c->how != FP_END_DONE) {
        snprintf(msg, len, "how %d (error %s, side %d)", c->how, strerror(c->r.error), c->r.reset_side);
        return 0;
    }
    if (c->pa.mismatch || c->pb.mismatch) {
        snprintf(msg, len, "byte mismatch at %llu/%llu", (unsigned long long)c->pa.mismatch_at,
                 (unsigned long long)c->pb.mismatch_at);
        return 0;
    }
    if (c->pb.received != c->pa.send_total || c->pa.received != c->pb.send_total) {
        snprintf(msg, len, "received %llu/%llu of %llu/%llu", (unsigned long long)c->pb.received,
                 (unsigned long long)c->pa.received, (unsigned long long)c->pa.send_total,
                 (unsigned long long)c->pb.send_total);
        return 0;
    }
    if (c->pa.first_err || c->pb.first_err) {
        snprintf(msg, len, "peer error %s/%s", strerror(c->pa.first_err), strerror(c->pb.first_err));
        return 0;
    }
    if ((!c->pa.closed && !c->pa.got_eof) || (!c->pb.closed && !c->pb.got_eof)) {
        snprintf(msg, len, "EOF not seen (a %d b %d)", c->pa.got_eof, c->pb.got_eof);
        return 0;
    }
    return 1;
}

#define CHECK_DELIVERED(c)                                     \
    do {                                                       \
        char m_[200];                                          \
        CHECK(conn_delivered((c), m_, sizeof(m_)), "%s", m_);  \
    } while (0)

static void two_way(conn *c, uint64_t ab, uint64_t ba)
{
    c->pa.send_total = ab;
    c->pb.send_total = ba;
    c->pa.shut_after_send = c->pb.shut_after_send = 1;
}

/* ---- cases ------------------------------------------------------------------------- */

static int case_bulk(void)
{
    world w;
    conn *c;
    fp_counter c_ab = 0, c_ba = 0, total = 0;
    fp_engine_stats st;
    const uint64_t n = 64 * MiB;
    double t0;
    int ok = 0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    c->r.dir[0].ctr[0] = &c_ab;
    c->r.dir[0].ctr[1] = &total;
    c->r.dir[1].ctr[0] = &c_ba;
    c->r.dir[1].ctr[1] = &total;
    two_way(c, n, n + 5);
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    t0 = tk_now();
    CHECK(world_run(&w, all_done, 120), "timeout: how %d, a got %llu b got %llu", c->how,
          (unsigned long long)c->pa.received, (unsigned long long)c->pb.received);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    CHECK(c->r.dir[0].spliced == n && c->r.dir[1].spliced == n + 5 && !c->r.dir[0].copied &&
              !c->r.dir[1].copied, "spliced %llu/%llu", (unsigned long long)c->r.dir[0].spliced,
          (unsigned long long)c->r.dir[1].spliced);
    CHECK(c_ab == n && c_ba == n + 5 && total == 2 * n + 5, "counters %llu %llu %llu",
          (unsigned long long)c_ab, (unsigned long long)c_ba, (unsigned long long)total);
    world_stats(&w, &st);
    CHECK(st.pipes_created <= 2, "%llu pipes created for one connection", (unsigned long long)st.pipes_created);
    CHECK(fp_engine_count(w.e) == 0, "count %u after the end", fp_engine_count(w.e));
    DETAIL("2 x 64 MiB in %.2fs, %u pumps, %lu runs (%lu with more), %llu pended",
           tk_now() - t0, c->r.eng_pumps, w.runs, w.more_runs, (unsigned long long)st.pended);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* 200 short connections at once: connect, 13-byte request, 13-byte
 * response, client closes, server closes on EOF. */
static int case_short_many(void)
{
    world w;
    fp_engine_stats st;
    const int n = 200;
    unsigned long pumps = 0, maxp = 0;
    int ok = 0, i;

    CHECK(world_init(&w, 64 * KiB, 64) == 0, "engine: %s", strerror(errno));
    for (i = 0; i < n; i++) {
        conn *c = conn_open(&w, 64 * KiB, NULL, NULL);

        CHECK(c, "setup %d: %s", i, strerror(errno));
        c->pa.send_total = 13;
        c->pa.close_after = 13;
        c->pb.send_total = 13;
        c->pb.send_after = 13;
        c->pb.close_on_eof = 1;
        CHECK(conn_add(&w, c, 0) == 0, "add %d failed", i);
    }
    CHECK(fp_engine_count(w.e) == (unsigned)n, "count %u", fp_engine_count(w.e));
    CHECK(world_run(&w, all_done, 60), "timeout");
    CHECK_ENGINE(&w);
    for (i = 0; i < n; i++) {
        conn *c = w.c[i];

        CHECK(c->reports == 1, "conn %d reported %d times", i, c->reports);
        CHECK(c->how == FP_END_DONE, "conn %d: how %d (%s)", i, c->how, strerror(c->r.error));
        CHECK(c->pb.received == 13 && c->pa.received == 13 && !c->pa.mismatch && !c->pb.mismatch,
              "conn %d: bytes %llu/%llu", i, (unsigned long long)c->pb.received,
              (unsigned long long)c->pa.received);
        CHECK(c->pb.got_eof && !c->pa.first_err && !c->pb.first_err, "conn %d: eof %d err %d/%d", i,
              c->pb.got_eof, c->pa.first_err, c->pb.first_err);
        pumps += c->r.eng_pumps;
        if (c->r.eng_pumps > maxp)
            maxp = c->r.eng_pumps;
    }
    world_stats(&w, &st);
    CHECK(maxp <= 8, "a connection took %lu pumps", maxp);
    CHECK(st.pipes_created <= 8, "%llu pipes created for %d connections", (unsigned long long)st.pipes_created, n);
    CHECK(st.pipes_reused >= (uint64_t)n, "pipes reused only %llu times", (unsigned long long)st.pipes_reused);
    CHECK(fp_engine_count(w.e) == 0 && st.pending == 0 && st.queued == 0, "leftovers: count %u pending %u queued %u",
          fp_engine_count(w.e), st.pending, st.queued);
    DETAIL("%d conns: %.1f pumps/conn (max %lu), %lu runs, %.2f events/conn, pipes: %llu created, %llu reused, pool %u",
           n, (double)pumps / n, maxp, w.runs, (double)st.events / n, (unsigned long long)st.pipes_created,
           (unsigned long long)st.pipes_reused, st.pool_size);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* Runs the world until nothing happens for 50 ms: the registration events
 * (EPOLLOUT of both sockets) are consumed, the relay waits for an edge. */
static int settle(world *w)
{
    return world_quiet(w, 50, 5);
}

/* `sender` (A or B) sends `bytes`, then resets (or half-closes), all while
 * the engine does not run: the engine's next epoll_wait returns data and the
 * RST (or FIN) in ONE event. With the short-read shortcut, the relay would
 * read the data, call src drained, and never hear of the reset (no further
 * edge comes). */
static int burst_then(int b_sends, uint64_t bytes, int rst)
{
    world w;
    conn *c;
    tk_peer *tx, *rx;
    int ok = 0, side = b_sends ? 1 : 0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    tx = b_sends ? &c->pb : &c->pa;
    rx = b_sends ? &c->pa : &c->pb;
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    CHECK(settle(&w), "never settled");
    CHECK(!c->how, "ended early: %d", c->how);
    /* The burst, with no engine run in between. */
    tx->send_total = bytes;
    while (tk_peer_may_send(tx))
        tk_peer_send(tx);
    CHECK(tx->sent == bytes, "sent only %llu", (unsigned long long)tx->sent);
    if (!rst)
        shutdown(tx->fd, SHUT_WR);
    CHECK(tk_wait_acked(tx->fd, 3000) == 0, "data not acknowledged");
    if (rst) {
        tk_sock_abort(tx->fd);
        tx->fd = -1;
        tx->closed = 1;
        CHECK(world_run(&w, all_ended, 10), "relay never ended (pumps %u): the reset was not seen",
              c->r.eng_pumps);
        /* The other peer reads what arrived, then the reset. */
        CHECK(world_run(&w, all_done, 10), "other peer never saw the end (err %d eof %d)", rx->first_err,
              rx->got_eof);
        CHECK_ENGINE(&w);
        CHECK(c->how == FP_END_RESET, "how %d", c->how);
        CHECK(c->r.reset_side == side, "reset_side %d", c->r.reset_side);
        CHECK(c->r.error == ECONNRESET, "error %s", strerror(c->r.error));
        CHECK(rx->first_err == ECONNRESET, "other peer saw %s (eof %d)",
              rx->first_err ? strerror(rx->first_err) : "no error", rx->got_eof);
        CHECK(!rx->mismatch, "byte mismatch");
        DETAIL("%llu bytes + RST in one wakeup: RESET side %d after %u pumps, peer got %llu bytes then ECONNRESET",
               (unsigned long long)bytes, side, c->r.eng_pumps, (unsigned long long)rx->received);
    } else {
        tx->shut_done = 1;
        /* The other side answers after the EOF, then closes too. */
        rx->send_total = 100 * KiB + 3;
        rx->send_after_eof = 1;
        rx->shut_after_send = 1;
        CHECK(world_run(&w, all_done, 20), "timeout: how %d rx got %llu eof %d", c->how,
              (unsigned long long)rx->received, rx->got_eof);
        CHECK_ENGINE(&w);
        CHECK_DELIVERED(c);
        DETAIL("%llu bytes + FIN in one wakeup: delivered, FIN forwarded, answered, DONE after %u pumps",
               (unsigned long long)bytes, c->r.eng_pumps);
    }
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_rst_behind_data_a(void) { return burst_then(0, 1000, 1); }
static int case_rst_behind_data_b(void) { return burst_then(1, 40 * KiB, 1); }
static int case_fin_behind_data_a(void) { return burst_then(0, 1000, 0); }
static int case_fin_behind_data_b(void) { return burst_then(1, 40 * KiB + 1, 0); }

static int half_close(int first_is_a)
{
    world w;
    conn *c;
    tk_peer *first, *second;
    int ok = 0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    first = first_is_a ? &c->pa : &c->pb;
    second = first_is_a ? &c->pb : &c->pa;
    first->send_total = 1 * MiB + 7;
    first->shut_after_send = 1;
    second->send_total = 8 * MiB;
    second->send_after_eof = 1;
    second->shut_after_send = 1;
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    CHECK(world_run(&w, all_done, 60), "timeout: how %d, first got %llu eof %d", c->how,
          (unsigned long long)first->received, first->got_eof);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    DETAIL("dir %d shut first, 8 MiB answered after it, %u pumps", first_is_a ? 0 : 1, c->r.eng_pumps);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_half_close_ab(void) { return half_close(1); }
static int case_half_close_ba(void) { return half_close(0); }

/* The receiver stops reading: the relay must stall holding at most a pipe,
 * go quiet (no pump without an edge), then resume on dst's EPOLLOUT edge and
 * re-read src (whose bytes announced themselves long ago). */
static int backpressure(int dir)
{
    world w;
    conn *c;
    tk_peer *tx, *rx;
    fp_relay_dir *d;
    fp_engine_stats st;
    tk_bufs small = { 4096, 0, 0, 4096 }; /* receiver's rcvbuf, relay's dst sndbuf */
    unsigned pumps_quiet;
    int ok = 0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    if (dir == 0)
        c = conn_open(&w, 64 * KiB, NULL, &(tk_bufs){ 0, 4096, 4096, 0 });
    else
        c = conn_open(&w, 64 * KiB, &small, NULL);
    CHECK(c, "setup: %s", strerror(errno));
    d = &c->r.dir[dir];
    tx = dir == 0 ? &c->pa : &c->pb;
    rx = dir == 0 ? &c->pb : &c->pa;
    rx->reading = 0;
    tx->send_total = 16 * MiB;
    tx->shut_after_send = 1;
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    CHECK(world_quiet(&w, 300, 30), "never went quiet (%u pumps): spinning?", c->r.eng_pumps);
    CHECK_ENGINE(&w);
    CHECK(!c->how, "relay ended: %d", c->how);
    CHECK(d->flags & FP_DIR_DST_FULL, "DST_FULL not set (flags 0x%x)", d->flags);
    CHECK(d->in_flight > 0 && d->in_flight <= d->pipe_cap, "in_flight %zu, pipe_cap %zu", d->in_flight,
          d->pipe_cap);
    world_stats(&w, &st);
    CHECK(st.pending == 0 && !w.more, "stalled relay left on the pending list");
    pumps_quiet = c->r.eng_pumps;
    CHECK(pumps_quiet < 2000, "%u pumps to fill the buffers", pumps_quiet);
    DETAIL("stalled holding %zu/%zu after %u pumps, flags 0x%x", d->in_flight,
           d->pipe_cap, pumps_quiet, d->flags);
    /* Quiet means quiet: another 300 ms without a single pump. */
    CHECK(world_quiet(&w, 300, 5), "not quiet the second time");
    CHECK(c->r.eng_pumps == pumps_quiet, "%u pumps while stalled", c->r.eng_pumps - pumps_quiet);
    rx->reading = 1;
    rx->shut_after_send = 1;
    CHECK(world_run(&w, all_done, 60), "timeout after resuming: how %d rx %llu", c->how,
          (unsigned long long)rx->received);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    NOTE("; resumed, 16 MiB delivered, %u pumps in all", c->r.eng_pumps);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_backpressure_ab(void) { return backpressure(0); }
static int case_backpressure_ba(void) { return backpressure(1); }

/* A unix-socket relay pair (one skb per send(), so 100-byte sends run a
 * 64 KiB pipe out of its 16 slots at 1600 bytes). */
static conn *conn_open_unix(world *w, size_t chunk)
{
    conn *c;
    int pa, pb;
    uint32_t s = 5 + 7919u * (uint32_t)w->nc;

    if (w->nc >= MAXC || !(c = calloc(1, sizeof(*c))))
        return NULL;
    if (tk_unix_pair(&pa, &c->ra) < 0) {
        free(c);
        return NULL;
    }
    if (tk_unix_pair(&c->rb, &pb) < 0) {
        close(pa);
        close(c->ra);
        free(c);
        return NULL;
    }
    tk_peer_init(&c->pa, pa, s, s + 333331u);
    tk_peer_init(&c->pb, pb, s + 333331u, s);
    fp_relay_init(&c->r, c->ra, c->rb, chunk);
    w->c[w->nc++] = c;
    return c;
}

/* Tiny segments fill a pipe's slots long before its bytes. Stalled
 * receiver: each round must go quiet (no spin), then the receiver takes
 * 16 KiB and the relay must resume. */
static int slot_stall(int unix_sockets)
{
    world w;
    conn *c;
    fp_relay_dir *d;
    int ok = 0, rounds;
    unsigned p0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    if (unix_sockets) {
        c = conn_open_unix(&w, 64 * KiB);
        if (c)
            tk_set_bufs(c->rb, 0, 4096);
    } else {
        c = conn_open(&w, 64 * KiB, NULL, &(tk_bufs){ 0, 4096, 4096, 0 });
        if (c)
            tk_set_nodelay(c->pa.fd);
    }
    CHECK(c, "setup: %s", strerror(errno));
    d = &c->r.dir[0];
    c->pb.reading = 0;
    c->pa.piece = 100;
    c->pa.send_total = 400 * KiB;
    c->pa.shut_after_send = 1;
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    for (rounds = 0; rounds < 4; rounds++) {
        CHECK(world_quiet(&w, 300, 20), "round %d: never went quiet (%u pumps): spinning?", rounds,
              c->r.eng_pumps);
        CHECK_ENGINE(&w);
        CHECK(!c->how, "relay ended: %d", c->how);
        if (rounds == 0)
            DETAIL("stalled with %zu/%zu bytes in the pipe, flags 0x%x", d->in_flight, d->pipe_cap, d->flags);
        p0 = c->r.eng_pumps;
        CHECK(world_quiet(&w, 200, 5) && c->r.eng_pumps == p0, "round %d: pumps while stalled", rounds);
        c->pb.reading = 1;
        c->pb.read_until = c->pb.received + 16 * KiB;
    }
    c->pb.read_until = 0;
    c->pb.shut_after_send = 1;
    CHECK(world_run(&w, all_done, 60), "timeout: how %d, b got %llu", c->how, (unsigned long long)c->pb.received);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    CHECK(c->r.eng_pumps < 20000, "%u pumps for %llu sends", c->r.eng_pumps,
          (unsigned long long)(c->pa.send_total / 100));
    NOTE("; %u pumps for %llu sends", c->r.eng_pumps, (unsigned long long)(c->pa.send_total / 100));
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static int case_slot_stall_unix(void) { return slot_stall(1); }
static int case_slot_stall_tcp(void) { return slot_stall(0); }

static int b_has_20000(world *w)
{
    return w->c[0]->pb.received >= 20000;
}

/* The hazard a short read hides under edge triggering: 200 sends of 100
 * bytes are queued before the engine ever runs, and nothing else happens
 * on A. The first read stops after 16 slots (1600 bytes) although 18400
 * more bytes are queued, and no edge will ever announce them. */
static int case_slot_short_read(void)
{
    world w;
    conn *c;
    int ok = 0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open_unix(&w, 64 * KiB)), "setup: %s", strerror(errno));
    c->pa.piece = 100;
    c->pa.send_total = 20000;
    while (tk_peer_may_send(&c->pa))
        tk_peer_send(&c->pa);
    CHECK(c->pa.sent == 20000, "could queue only %llu bytes", (unsigned long long)c->pa.sent);
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    /* No half-close yet: A stays silent until B has everything. */
    c->pb.read_until = 20000;
    CHECK(world_run(&w, b_has_20000, 3), "B got only %llu of 20000 bytes (%u pumps)",
          (unsigned long long)c->pb.received, c->r.eng_pumps);
    CHECK(c->pb.received == 20000 && !c->pb.mismatch, "B got %llu bytes, mismatch %d",
          (unsigned long long)c->pb.received, c->pb.mismatch);
    DETAIL("20000 bytes in 200 skbs, one edge: all delivered in %u pumps", c->r.eng_pumps);
    c->pb.read_until = 0;
    two_way(c, 20000, 0);
    CHECK(world_run(&w, all_done, 10), "timeout at the end: how %d", c->how);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* ---- threads for the fairness and bench cases ------------------------------------ */

typedef struct flood {
    int fd;
    int stop;               /* atomic */
    uint64_t bytes;         /* atomic */
    double seconds;         /* stop by itself after this long */
    int err;
} flood;

static unsigned char flood_buf[256 * 1024];

static void *flood_send(void *arg)
{
    flood *f = arg;
    double end = tk_now() + f->seconds;

    while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED) && tk_now() < end) {
        ssize_t w = send(f->fd, flood_buf, sizeof(flood_buf), MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            f->err = errno;
            break;
        }
        __atomic_store_n(&f->bytes, f->bytes + (uint64_t)w, __ATOMIC_RELAXED);
    }
    shutdown(f->fd, SHUT_WR);
    return NULL;
}

static void *flood_recv(void *arg)
{
    flood *f = arg;
    unsigned char *buf = malloc(1 << 20);

    if (!buf) {
        f->err = ENOMEM;
        return NULL;
    }
    for (;;) {
        ssize_t n = recv(f->fd, buf, 1 << 20, 0);

        if (n > 0) {
            __atomic_store_n(&f->bytes, f->bytes + (uint64_t)n, __ATOMIC_RELAXED);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            f->err = errno;
        break;
    }
    shutdown(f->fd, SHUT_WR); /* nothing to answer: the reverse direction ends too */
    free(buf);
    return NULL;
}

typedef struct pingpong {
    int cli, srv;
    int rounds, done;       /* done: atomic, rounds completed; at least `rounds`, and
                             * for at least `seconds` (bounded by 100000 rounds) */
    double seconds;
    double max_rtt;
    int err;
    int finished;           /* atomic: the client is through */
    const flood *watch;     /* the flood sender, sampled at start and end */
    uint64_t flood_at_start, flood_at_end;
} pingpong;

static int recv_all(int fd, unsigned char *p, size_t n)
{
    while (n) {
        ssize_t k = recv(fd, p, n, 0);

        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return k < 0 ? -errno : -EPIPE;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

static void *pp_server(void *arg)
{
    pingpong *pp = arg;
    unsigned char b[64];

    while (recv_all(pp->srv, b, sizeof(b)) == 0)
        if (send(pp->srv, b, sizeof(b), MSG_NOSIGNAL) != (ssize_t)sizeof(b))
            break;
    shutdown(pp->srv, SHUT_WR);
    return NULL;
}

static void *pp_client(void *arg)
{
    pingpong *pp = arg;
    unsigned char b[64], r[64];
    int i, e;

    double start = tk_now();

    pp->flood_at_start = __atomic_load_n(&pp->watch->bytes, __ATOMIC_RELAXED);
    for (i = 0; i < 100000 && (i < pp->rounds || tk_now() - start < pp->seconds); i++) {
        double t0 = tk_now(), dt;

        memset(b, i, sizeof(b));
        if (send(pp->cli, b, sizeof(b), MSG_NOSIGNAL) != (ssize_t)sizeof(b)) {
            pp->err = errno;
            break;
        }
        e = recv_all(pp->cli, r, sizeof(r));
        if (e || memcmp(b, r, sizeof(b))) {
            pp->err = e ? -e : EBADMSG;
            break;
        }
        dt = tk_now() - t0;
        if (dt > pp->max_rtt)
            pp->max_rtt = dt;
        __atomic_store_n(&pp->done, i + 1, __ATOMIC_RELAXED);
    }
    pp->flood_at_end = __atomic_load_n(&pp->watch->bytes, __ATOMIC_RELAXED);
    pp->rounds = i;
    __atomic_store_n(&pp->finished, 1, __ATOMIC_RELEASE);
    shutdown(pp->cli, SHUT_WR);
    while (recv(pp->cli, r, sizeof(r), 0) > 0)
        ;
    return NULL;
}

/* One connection floods A -> B at full speed (peers in threads), another
 * does 200 small round trips. The flood's pumps stop at the 2 MiB budget
 * with bytes still queued: the relay must go on the pending list (*more),
 * and the round trips must not wait for the flood. */
static int case_fairness(void)
{
    world w;
    conn *fc, *pc;
    flood tx = { 0 }, rx = { 0 };
    pingpong pp = { 0 };
    pthread_t t[4];
    int started = 0, ok = 0;
    fp_engine_stats st;
    tk_bufs big_a = { 0, 4 << 20, 4 << 20, 0 }, big_b = { 0, 4 << 20, 4 << 20, 0 };
    double t0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK((fc = conn_open(&w, 64 * KiB, &big_a, &big_b)), "setup: %s", strerror(errno));
    CHECK((pc = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    /* The peers belong to threads now; the world only runs the engine. */
    tk_set_nonblock(fc->pa.fd, 0);
    tk_set_nonblock(fc->pb.fd, 0);
    tk_set_nonblock(pc->pa.fd, 0);
    tk_set_nonblock(pc->pb.fd, 0);
    tk_set_timeouts(fc->pa.fd, 20);
    tk_set_timeouts(fc->pb.fd, 20);
    tk_set_timeouts(pc->pa.fd, 20);
    tk_set_timeouts(pc->pb.fd, 20);
    tx.fd = fc->pa.fd;
    tx.seconds = 30;
    rx.fd = fc->pb.fd;
    pp.cli = pc->pa.fd;
    pp.srv = pc->pb.fd;
    pp.rounds = 200;
    pp.seconds = 0.5;
    pp.watch = &tx;
    fc->pa.fd = fc->pb.fd = pc->pa.fd = pc->pb.fd = -1; /* not the world's peers */
    CHECK(conn_add(&w, fc, 0) == 0 && conn_add(&w, pc, 0) == 0, "add failed");
    pthread_create(&t[0], NULL, flood_recv, &rx);
    pthread_create(&t[1], NULL, flood_send, &tx);
    /* Let the flood get going before the round trips start. */
    t0 = tk_now();
    while (tk_now() - t0 < 0.3)
        world_step(&w, 10);
    pthread_create(&t[2], NULL, pp_server, &pp);
    pthread_create(&t[3], NULL, pp_client, &pp);
    started = 1;
    t0 = tk_now();
    while (!__atomic_load_n(&pp.finished, __ATOMIC_ACQUIRE) && tk_now() - t0 < 30)
        world_step(&w, 10);
    __atomic_store_n(&tx.stop, 1, __ATOMIC_RELAXED);
    t0 = tk_now();
    while (!all_ended(&w) && tk_now() - t0 < 30)
        world_step(&w, 10);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    pthread_join(t[2], NULL);
    pthread_join(t[3], NULL);
    started = 0;
    CHECK_ENGINE(&w);
    CHECK(pp.done == pp.rounds && pp.done >= 200 && !pp.err, "round trips: %d of %d, err %s", pp.done, pp.rounds,
          strerror(pp.err));
    CHECK(pp.flood_at_end - pp.flood_at_start >= 16 * MiB, "the flood did not run during the round trips (%llu bytes)",
          (unsigned long long)(pp.flood_at_end - pp.flood_at_start));
    CHECK(fc->how == FP_END_DONE && pc->how == FP_END_DONE, "how %d/%d", fc->how, pc->how);
    CHECK(rx.bytes == tx.bytes && !tx.err && !rx.err, "flood: sent %llu received %llu", (unsigned long long)tx.bytes,
          (unsigned long long)rx.bytes);
    world_stats(&w, &st);
    CHECK(st.pended > 0 && w.more_runs > 0, "the budget never stopped the flood (pended %llu, more %lu)",
          (unsigned long long)st.pended, w.more_runs);
    CHECK(pp.max_rtt < 1.0, "worst round trip %.3fs", pp.max_rtt);
    DETAIL("flood %llu MiB (%llu MiB during %d round trips, worst %.1f ms); %llu re-pumps from pending, %lu runs with more",
           (unsigned long long)(tx.bytes >> 20), (unsigned long long)((pp.flood_at_end - pp.flood_at_start) >> 20),
           pp.done, pp.max_rtt * 1e3, (unsigned long long)st.pended, w.more_runs);
    ok = 1;
out:
    if (started) {
        __atomic_store_n(&tx.stop, 1, __ATOMIC_RELAXED);
        world_free(&w); /* aborts the relays: every thread's blocking call returns */
        pthread_join(t[0], NULL);
        pthread_join(t[1], NULL);
        pthread_join(t[2], NULL);
        pthread_join(t[3], NULL);
    } else {
        world_free(&w);
    }
    if (tx.fd > 0)
        close(tx.fd);
    if (rx.fd > 0)
        close(rx.fd);
    if (pp.cli > 0)
        close(pp.cli);
    if (pp.srv > 0)
        close(pp.srv);
    return ok;
}

/* A listener whose accept queue is full (backlog 0, one connection never
 * accepted): a further connect's SYN is dropped, and the connect stays in
 * progress until the queue has room and the SYN is retransmitted (~1 s). */
typedef struct slow_listener {
    int l, blocker;
    struct sockaddr_in sa;
} slow_listener;

static int slow_listener_open(slow_listener *s)
{
    s->blocker = -1;
    s->l = tk_listener(&s->sa, 0, 0, 0);
    if (s->l < 0)
        return -1;
    s->blocker = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (s->blocker < 0)
        return -1;
    connect(s->blocker, (struct sockaddr *)&s->sa, sizeof(s->sa));
    return tk_wait_acked(s->blocker, 1000) == 0 ? 0 : -1; /* established, queued */
}

static void slow_listener_close(slow_listener *s)
{
    if (s->l >= 0)
        close(s->l);
    if (s->blocker >= 0)
        close(s->blocker);
    s->l = s->blocker = -1;
}

/* A relay whose B is a non-blocking connect to sa (in progress). */
static conn *conn_open_connecting(world *w, size_t chunk, const struct sockaddr_in *sa, int *in_progress)
{
    conn *c;
    int pa, rc;
    uint32_t s = 3 + 7919u * (uint32_t)w->nc;

    if (w->nc >= MAXC || !(c = calloc(1, sizeof(*c))))
        return NULL;
    c->pb.fd = -1;
    if (tk_tcp_pair(&pa, &c->ra, NULL) < 0) {
        free(c);
        return NULL;
    }
    c->rb = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    rc = c->rb < 0 ? -1 : connect(c->rb, (const struct sockaddr *)sa, sizeof(*sa));
    *in_progress = rc < 0 && errno == EINPROGRESS;
    tk_peer_init(&c->pa, pa, s, s + 333331u);
    tk_peer_init(&c->pb, -1, s + 333331u, s);
    fp_relay_init(&c->r, c->ra, c->rb, chunk);
    w->c[w->nc++] = c;
    return c;
}

/* The client sends its request (and half-closes) while the upstream connect
 * is still in progress: A's readiness must be remembered, nothing pumped,
 * and everything served once the connect completes. */
static int case_connect_progress(void)
{
    world w;
    conn *c;
    slow_listener sl = { .l = -1, .blocker = -1 };
    fp_engine_stats st;
    int ok = 0, inprog = 0, acc;
    double t0, t_conn;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK(slow_listener_open(&sl) == 0, "slow listener: %s", strerror(errno));
    CHECK((c = conn_open_connecting(&w, 64 * KiB, &sl.sa, &inprog)), "setup: %s", strerror(errno));
    CHECK(inprog, "connect did not stay in progress");
    c->pa.send_total = 5000;
    c->pa.shut_after_send = 1;
    CHECK(conn_add(&w, c, 1) == 0, "add failed");
    /* 300 ms: A sends and half-closes; the connect is stuck in SYN_SENT. */
    t0 = tk_now();
    while (tk_now() - t0 < 0.3)
        world_step(&w, 20);
    CHECK(!c->how, "ended while connecting: how %d (%s)", c->how, strerror(c->r.error));
    CHECK(c->pa.sent == 5000 && c->pa.shut_done, "A did not send its request");
    CHECK(c->r.eng_pumps == 0 && (c->r.eng_state & FP_ENG_CONNECTING), "pumped while connecting (%u pumps, state 0x%x)",
          c->r.eng_pumps, c->r.eng_state);
    CHECK(c->r.eng_events & FP_READ_A, "A's readiness not remembered (0x%x)", c->r.eng_events);
    /* Make room in the accept queue: the SYN retransmit gets through. */
    acc = accept4(sl.l, NULL, NULL, SOCK_CLOEXEC);
    if (acc >= 0)
        close(acc);
    close(sl.blocker);
    sl.blocker = -1;
    t0 = tk_now();
    acc = -1;
    while (acc < 0 && tk_now() - t0 < 5) {
        struct pollfd p = { sl.l, POLLIN, 0 };

        world_step(&w, 10);
        if (poll(&p, 1, 0) == 1)
            acc = accept4(sl.l, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    }
    CHECK(acc >= 0, "the upstream never got the connection");
    t_conn = tk_now() - t0;
    c->pb.fd = acc;
    c->pb.send_total = 3000;
    c->pb.send_after_eof = 1;
    c->pb.shut_after_send = 1;
    CHECK(world_run(&w, all_done, 10), "timeout: how %d, b got %llu eof %d", c->how,
          (unsigned long long)c->pb.received, c->pb.got_eof);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    world_stats(&w, &st);
    CHECK(st.connects_ok == 1 && st.connects_failed == 0, "connects ok %llu failed %llu",
          (unsigned long long)st.connects_ok, (unsigned long long)st.connects_failed);
    DETAIL("request + FIN sent during a %.2fs connect: served after it, DONE in %u pumps",
           t_conn, c->r.eng_pumps);
    ok = 1;
out:
    world_free(&w);
    slow_listener_close(&sl);
    return ok;
}

static int case_connect_refused(void)
{
    world w;
    conn *c;
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    fp_engine_stats st;
    int ok = 0, inprog = 0, port_holder;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    /* A bound, never listening socket: its port answers SYN with RST. */
    port_holder = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(port_holder >= 0 && bind(port_holder, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
              getsockname(port_holder, (struct sockaddr *)&sa, &len) == 0, "bind: %s", strerror(errno));
    c = conn_open_connecting(&w, 64 * KiB, &sa, &inprog);
    close(port_holder);
    CHECK(c, "setup: %s", strerror(errno));
    CHECK(inprog, "connect failed at once (%s): nothing to test", strerror(errno));
    c->pa.send_total = 100;
    CHECK(conn_add(&w, c, 1) == 0, "add failed");
    CHECK(world_run(&w, all_done, 10), "timeout: how %d, a err %d", c->how, c->pa.first_err);
    CHECK_ENGINE(&w);
    CHECK(c->how == FP_END_CONNECT_FAIL, "how %d", c->how);
    CHECK(c->r.error == ECONNREFUSED && c->r.reset_side == 1, "error %s side %d", strerror(c->r.error),
          c->r.reset_side);
    CHECK(c->pa.first_err == ECONNRESET, "client saw %s", c->pa.first_err ? strerror(c->pa.first_err) : "no error");
    CHECK(c->r.eng_pumps == 0, "%u pumps", c->r.eng_pumps);
    world_stats(&w, &st);
    CHECK(st.connects_failed == 1 && st.pipes_created == 0, "connects_failed %llu, pipes %llu",
          (unsigned long long)st.connects_failed, (unsigned long long)st.pipes_created);
    DETAIL("FP_END_CONNECT_FAIL (%s), client got ECONNRESET, no pump, no pipe", strerror(c->r.error));
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* fp_engine_finish() on a relay still connecting: CONNECT_TIMEOUT, the
 * client sees a reset, nothing is reported afterwards. */
static int case_connect_timeout(void)
{
    world w;
    conn *c;
    slow_listener sl = { .l = -1, .blocker = -1 };
    int ok = 0, inprog = 0;
    double t0;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK(slow_listener_open(&sl) == 0, "slow listener: %s", strerror(errno));
    CHECK((c = conn_open_connecting(&w, 64 * KiB, &sl.sa, &inprog)), "setup: %s", strerror(errno));
    CHECK(inprog, "connect did not stay in progress");
    c->pa.send_total = 10;
    CHECK(conn_add(&w, c, 1) == 0, "add failed");
    t0 = tk_now();
    while (tk_now() - t0 < 0.1)
        world_step(&w, 10);
    CHECK(!c->how && (c->r.eng_state & FP_ENG_CONNECTING), "not connecting: how %d state 0x%x", c->how,
          c->r.eng_state);
    conn_finish(&w, c);
    CHECK(c->r.eng_how == FP_END_CONNECT_TIMEOUT && c->r.eng_state == 0, "eng_how %d state 0x%x", c->r.eng_how,
          c->r.eng_state);
    CHECK(fp_engine_count(w.e) == 0, "count %u", fp_engine_count(w.e));
    t0 = tk_now();
    while (tk_now() - t0 < 0.3)
        world_step(&w, 10);
    CHECK(c->reports == 0, "reported after fp_engine_finish()");
    CHECK(c->pa.first_err == ECONNRESET, "client saw %s", c->pa.first_err ? strerror(c->pa.first_err) : "no error");
    CHECK_ENGINE(&w);
    DETAIL("eng_how CONNECT_TIMEOUT, client reset, never reported");
    ok = 1;
out:
    world_free(&w);
    slow_listener_close(&sl);
    return ok;
}

/* Puts a relay on the pending list: several MiB are queued at A before one
 * run, B's buffers take them, and the pump stops at the 2 MiB budget. */
static int case_finish_pending(void)
{
    world w;
    conn *c, *other;
    fp_engine_stats st;
    fp_finished out[4];
    tk_bufs ab = { 0, 4 << 20, 4 << 20, 0 }, bb = { 0, 4 << 20, 4 << 20, 0 };
    int ok = 0, more = 0, k, n;

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, &ab, &bb)), "setup: %s", strerror(errno));
    CHECK((other = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    CHECK(conn_add(&w, c, 0) == 0 && conn_add(&w, other, 0) == 0, "add failed");
    CHECK(settle(&w), "never settled");
    c->pa.send_total = 6 * MiB;
    c->pb.reading = 0;
    for (k = 0; k < 1000 && tk_peer_may_send(&c->pa); k++)
        tk_peer_send(&c->pa);
    CHECK(c->pa.sent > 3 * MiB, "could queue only %llu bytes", (unsigned long long)c->pa.sent);
    tk_wait_acked(c->pa.fd, 500);
    n = fp_engine_run(w.e, out, 4, &more);
    CHECK(n == 0, "run: %d", n);
    world_stats(&w, &st);
    CHECK(more && st.pending == 1 && (c->r.eng_state & FP_ENG_QUEUED), "not pending: more %d pending %u state 0x%x, "
          "dir0 flags 0x%x in_flight %zu spliced %llu", more, st.pending, c->r.eng_state, c->r.dir[0].flags,
          c->r.dir[0].in_flight, (unsigned long long)c->r.dir[0].spliced);
    DETAIL("pending after %llu bytes (budget)", (unsigned long long)c->r.dir[0].spliced);
    conn_finish(&w, c);
    world_stats(&w, &st);
    CHECK(st.pending == 0 && fp_engine_count(w.e) == 1, "after finish: pending %u count %u", st.pending,
          fp_engine_count(w.e));
    CHECK(c->r.eng_how == FP_END_ABORTED, "eng_how %d", c->r.eng_how);
    /* The other connection still works, the finished one is never reported. */
    c->pb.reading = 1;
    two_way(other, 1000, 2000);
    CHECK(world_run(&w, all_done, 10), "timeout: other how %d, a err %d b err %d", other->how, c->pa.first_err,
          c->pb.first_err);
    CHECK_ENGINE(&w);
    CHECK(c->reports == 0, "finished relay was reported");
    CHECK(c->pa.first_err == ECONNRESET || c->pb.first_err == ECONNRESET, "peers saw %s/%s", strerror(c->pa.first_err),
          strerror(c->pb.first_err));
    CHECK_DELIVERED(other);
    NOTE("; finished: never reported, peers reset, the other relay DONE");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* Six relays each have MiBs queued before one run: the run stops pumping
 * at its 8 MiB budget and defers the rest, which the next run serves first;
 * then everything is delivered. */
static int case_run_budget(void)
{
    world w;
    fp_engine_stats st;
    fp_finished out[8];
    tk_bufs ab = { 0, 4 << 20, 4 << 20, 0 }, bb = { 0, 4 << 20, 4 << 20, 0 };
    int ok = 0, more = 0, i, k, pumped1 = 0;
    uint32_t p0[6];
    uint64_t pumps0;

    CHECK(world_init(&w, 64 * KiB, 16) == 0, "engine: %s", strerror(errno));
    for (i = 0; i < 6; i++) {
        conn *c = conn_open(&w, 64 * KiB, &ab, &bb);

        CHECK(c, "setup %d: %s", i, strerror(errno));
        CHECK(conn_add(&w, c, 0) == 0, "add %d failed", i);
    }
    CHECK(settle(&w), "never settled");
    for (i = 0; i < 6; i++) {
        conn *c = w.c[i];

        c->pa.send_total = 6 * MiB;
        c->pb.reading = 0;
        for (k = 0; k < 1000 && tk_peer_may_send(&c->pa); k++)
            tk_peer_send(&c->pa);
        CHECK(c->pa.sent >= 3 * MiB, "conn %d queued only %llu bytes", i, (unsigned long long)c->pa.sent);
    }
    for (i = 0; i < 6; i++) {
        tk_wait_acked(w.c[i]->pa.fd, 300);
        p0[i] = w.c[i]->r.eng_pumps;
    }
    world_stats(&w, &st);
    pumps0 = st.pumps;
    CHECK(fp_engine_run(w.e, out, 8, &more) == 0, "run 1 ended a relay");
    world_stats(&w, &st);
    for (i = 0; i < 6; i++)
        pumped1 += w.c[i]->r.eng_pumps > p0[i];
    CHECK(st.deferred > 0 && more && pumped1 < 6, "run 1: deferred %llu, more %d, %d relays pumped",
          (unsigned long long)st.deferred, more, pumped1);
    DETAIL("run 1 pumped %d relays (%llu pumps), deferred %llu", pumped1,
           (unsigned long long)(st.pumps - pumps0), (unsigned long long)st.deferred);
    CHECK(fp_engine_run(w.e, out, 8, &more) == 0, "run 2 ended a relay");
    for (i = 0; i < 6; i++)
        CHECK(w.c[i]->r.eng_pumps > p0[i], "relay %d deferred by run 1 was not served by run 2", i);
    w.more = more;
    for (i = 0; i < 6; i++) {
        w.c[i]->pb.reading = 1;
        two_way(w.c[i], 6 * MiB, 0);
    }
    CHECK(world_run(&w, all_done, 30), "timeout");
    CHECK_ENGINE(&w);
    for (i = 0; i < 6; i++)
        CHECK_DELIVERED(w.c[i]);
    NOTE("; run 2 served them first; 36 MiB delivered");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* Two relays end in the same run; run(max = 1) hands out one, the other
 * waits in the queue (*more) and fp_engine_finish() takes it out. Its
 * sockets were closed when it ended: finish must not close the (reused) fd
 * numbers again. */
static int case_finish_queued(void)
{
    world w;
    conn *c[2], *q = NULL;
    fp_finished out[1];
    fp_engine_stats st;
    int ok = 0, more = 0, n, i, fd_reuse[4] = { -1, -1, -1, -1 };

    CHECK(world_init(&w, 64 * KiB, 8) == 0, "engine: %s", strerror(errno));
    for (i = 0; i < 2; i++) {
        CHECK((c[i] = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
        CHECK(conn_add(&w, c[i], 0) == 0, "add failed");
    }
    CHECK(settle(&w), "never settled");
    for (i = 0; i < 2; i++) {
        shutdown(c[i]->pa.fd, SHUT_WR);
        shutdown(c[i]->pb.fd, SHUT_WR);
        c[i]->pa.shut_after_send = c[i]->pb.shut_after_send = c[i]->pa.shut_done = c[i]->pb.shut_done = 1;
        tk_wait_acked(c[i]->pa.fd, 1000);
        tk_wait_acked(c[i]->pb.fd, 1000);
    }
    n = fp_engine_run(w.e, out, 1, &more);
    CHECK(n == 1 && more, "run gave %d, more %d", n, more);
    for (i = 0; i < 2; i++) {
        if (out[0].relay == &c[i]->r) {
            c[i]->how = out[0].how;
            c[i]->reports = 1;
            c[i]->ra = c[i]->rb = -1;
        } else {
            q = c[i];
        }
    }
    CHECK(q && (q->r.eng_state & FP_ENG_FINISHED), "the other relay is not queued (state 0x%x)", q ? q->r.eng_state : 0);
    CHECK(fp_engine_count(w.e) == 1, "count %u with one queued", fp_engine_count(w.e));
    /* Whatever fds are opened now likely reuse the closed relay sockets' numbers. */
    for (i = 0; i < 2; i++) {
        int p[2];

        if (pipe2(p, O_CLOEXEC) == 0) {
            fd_reuse[2 * i] = p[0];
            fd_reuse[2 * i + 1] = p[1];
        }
    }
    conn_finish(&w, q);
    for (i = 0; i < 4; i++)
        CHECK(fd_reuse[i] < 0 || fcntl(fd_reuse[i], F_GETFD) >= 0, "fp_engine_finish closed fd %d again", fd_reuse[i]);
    CHECK(q->r.eng_how == FP_END_DONE && q->r.eng_state == 0, "eng_how %d state 0x%x", q->r.eng_how, q->r.eng_state);
    CHECK(fp_engine_count(w.e) == 0, "count %u", fp_engine_count(w.e));
    n = fp_engine_run(w.e, out, 1, &more);
    CHECK(n == 0 && !more, "run after finish: %d, more %d", n, more);
    world_stats(&w, &st);
    CHECK(st.queued == 0 && st.pending == 0, "queued %u pending %u", st.queued, st.pending);
    CHECK(world_run(&w, all_done, 5), "peers not done");
    CHECK_ENGINE(&w);
    DETAIL("one reported, the queued one finished: not reported, fds not closed twice");
    ok = 1;
out:
    for (i = 0; i < 4; i++)
        if (fd_reuse[i] >= 0)
            close(fd_reuse[i]);
    world_free(&w);
    return ok;
}

/* Sequential short connections share pipes through the pool. */
static int case_pool_reuse(void)
{
    world w;
    fp_engine_stats st;
    int ok = 0, i;

    CHECK(world_init(&w, 64 * KiB, 4) == 0, "engine: %s", strerror(errno));
    for (i = 0; i < 30; i++) {
        conn *c = conn_open(&w, 64 * KiB, NULL, NULL);

        CHECK(c, "setup %d: %s", i, strerror(errno));
        two_way(c, 5000 + (uint64_t)i, 7000);
        c->pb.send_after = 5000;
        CHECK(conn_add(&w, c, 0) == 0, "add %d failed", i);
        CHECK(world_run(&w, all_done, 10), "conn %d: timeout", i);
        CHECK_DELIVERED(c);
    }
    CHECK_ENGINE(&w);
    world_stats(&w, &st);
    CHECK(st.pipes_created <= 2, "%llu pipes created for 30 sequential connections",
          (unsigned long long)st.pipes_created);
    CHECK(st.pipes_reused >= 58 && st.pipes_closed == 0, "reused %llu closed %llu",
          (unsigned long long)st.pipes_reused, (unsigned long long)st.pipes_closed);
    CHECK(st.pool_size == st.pipes_created && w.max_pool <= 4, "pool %u, max seen %u", st.pool_size, w.max_pool);
    DETAIL("30 conns: %llu pipes created, %llu reuses, 0 closed, pool %u",
           (unsigned long long)st.pipes_created, (unsigned long long)st.pipes_reused, st.pool_size);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* A direction stalls with bytes in its pipe, then the sender resets. The
 * reset arrives while the read is suppressed (full pipe): the engine must
 * still notice it (EPOLLERR -> SO_ERROR), end the relay, and close (never
 * pool) the pipe that held bytes. */
static int case_pool_reset_with_bytes(void)
{
    world w;
    conn *c;
    fp_engine_stats st0, st;
    double t0;
    size_t held;
    int ok = 0;

    CHECK(world_init(&w, 64 * KiB, 4) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, NULL, &(tk_bufs){ 0, 4096, 4096, 0 })), "setup: %s", strerror(errno));
    c->pb.reading = 0;
    c->pa.send_total = 1 * MiB;
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    CHECK(world_quiet(&w, 200, 10), "never went quiet");
    CHECK(c->r.dir[0].in_flight > 0, "nothing in the pipe");
    held = c->r.dir[0].in_flight;
    world_stats(&w, &st0);
    c->pa.rst_after = 0;
    t0 = tk_now();
    CHECK(world_run(&w, all_ended, 5), "reset not noticed while stalled (flags 0x%x)", c->r.dir[0].flags);
    CHECK(c->how == FP_END_RESET && c->r.reset_side == 0, "how %d side %d error %s", c->how, c->r.reset_side,
          strerror(c->r.error));
    world_stats(&w, &st);
    CHECK(st.pipes_closed == st0.pipes_closed + 1, "pipes closed %llu -> %llu", (unsigned long long)st0.pipes_closed,
          (unsigned long long)st.pipes_closed);
    CHECK(st.pipes_returned == st0.pipes_returned && st.pool_size == st0.pool_size, "a pipe with bytes was pooled");
    c->pb.reading = 1;
    CHECK(world_run(&w, all_done, 5), "peer B did not see the end");
    CHECK(c->pb.first_err == ECONNRESET, "B saw %s", c->pb.first_err ? strerror(c->pb.first_err) : "no error");
    CHECK_ENGINE(&w);
    DETAIL("RESET %.0f ms after the RST (%s), the pipe holding %zu bytes closed, not pooled",
           (tk_now() - t0) * 1e3, strerror(c->r.error), held);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* Ten connections hold pipes at once (stalled receivers); when they end,
 * the pool keeps pool_max = 3 and closes the rest. */
static int case_pool_max(void)
{
    world w;
    fp_engine_stats st;
    int ok = 0, i;

    CHECK(world_init(&w, 64 * KiB, 3) == 0, "engine: %s", strerror(errno));
    for (i = 0; i < 10; i++) {
        conn *c = conn_open(&w, 64 * KiB, NULL, &(tk_bufs){ 0, 4096, 4096, 0 });

        CHECK(c, "setup %d: %s", i, strerror(errno));
        c->pb.reading = 0;
        two_way(c, 512 * KiB, 0);
        CHECK(conn_add(&w, c, 0) == 0, "add %d failed", i);
    }
    CHECK(world_quiet(&w, 200, 20), "never went quiet");
    world_stats(&w, &st);
    CHECK(st.pipes_created >= 10, "only %llu pipes for 10 stalled directions", (unsigned long long)st.pipes_created);
    for (i = 0; i < 10; i++)
        w.c[i]->pb.reading = 1;
    CHECK(world_run(&w, all_done, 30), "timeout");
    CHECK_ENGINE(&w);
    for (i = 0; i < 10; i++)
        CHECK_DELIVERED(w.c[i]);
    world_stats(&w, &st);
    CHECK(w.max_pool <= 3 && st.pool_size == 3, "pool %u, largest seen %u", st.pool_size, w.max_pool);
    CHECK(st.pipes_closed == st.pipes_created - 3, "created %llu closed %llu", (unsigned long long)st.pipes_created,
          (unsigned long long)st.pipes_closed);
    DETAIL("%llu pipes created, %llu returned, %llu closed, pool never above %u",
           (unsigned long long)st.pipes_created, (unsigned long long)st.pipes_returned,
           (unsigned long long)st.pipes_closed, w.max_pool);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* read()/write() fallback (splice refused) under the engine: the drain
 * rule and the pending list work there too. */
static int case_fallback(void)
{
    world w;
    conn *c;
    int ok = 0;

    CHECK(world_init(&w, 64 * KiB, 4) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    c->r.dir[0].flags |= FP_DIR_TEST_NOSPLICE;
    c->r.dir[1].flags |= FP_DIR_TEST_NOSPLICE;
    two_way(c, 8 * MiB, 8 * MiB + 1);
    CHECK(conn_add(&w, c, 0) == 0, "add failed");
    CHECK(world_run(&w, all_done, 60), "timeout: how %d", c->how);
    CHECK_ENGINE(&w);
    CHECK_DELIVERED(c);
    CHECK((c->r.dir[0].flags & FP_DIR_FALLBACK) && c->r.dir[0].copied == 8 * MiB &&
              c->r.dir[1].copied == 8 * MiB + 1, "copied %llu/%llu", (unsigned long long)c->r.dir[0].copied,
          (unsigned long long)c->r.dir[1].copied);
    DETAIL("8 MiB each way copied, %u pumps", c->r.eng_pumps);
    ok = 1;
out:
    world_free(&w);
    return ok;
}

/* SIGPIPE at its default (not CPython): B half-closes, then resets while
 * the relay's B socket is in CLOSE_WAIT (sk_err becomes EPIPE), and A's
 * bytes arrive in the same wakeup, so the pump splices into B and the kernel
 * raises SIGPIPE. The engine must block and swallow it; the child must live
 * and see the relay RESET with EPIPE. */
static int case_sigpipe(void)
{
    pid_t pid;
    int st = 0, ok = 0;

    fflush(stdout);
    pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        world w;
        conn *c;
        fp_engine_stats es;
        int code = 0;

        signal(SIGPIPE, SIG_DFL);
        if (world_init(&w, 64 * KiB, 4) < 0)
            _exit(3);
        fp_engine_get_stats(w.e, &es);
        if (!es.sigpipe_guard)
            _exit(4);
        if (!(c = conn_open(&w, 64 * KiB, NULL, NULL)) || conn_add(&w, c, 0) < 0)
            _exit(5);
        c->pb.shut_after_send = 1;
        c->pa.reading = 1;
        /* The FIN reaches A through the relay: B's relay socket is in CLOSE_WAIT. */
        if (!world_run(&w, all_done, 0.5) && !c->pa.got_eof)
            _exit(6);
        /* Now, with no run in between: B resets, A sends. */
        tk_sock_abort(c->pb.fd);
        c->pb.fd = -1;
        c->pb.closed = 1;
        c->pa.send_total = 1000;
        while (tk_peer_may_send(&c->pa))
            tk_peer_send(&c->pa);
        tk_wait_acked(c->pa.fd, 1000);
        if (!world_run(&w, all_ended, 5))
            code = 7;
        else if (c->how != FP_END_RESET || c->r.error != EPIPE)
            code = 8;
        world_free(&w);
        _exit(code);
    }
    CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
    CHECK(!WIFSIGNALED(st), "child killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
          "child status %d (4 no guard, 6 FIN, 7 no end, 8 not RESET/EPIPE)", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    DETAIL("SIG_DFL: splice into a CLOSE_WAIT+RST socket -> EPIPE, SIGPIPE swallowed");
    ok = 1;
out:
    return ok;
}

/* fp_engine_add() errors leave nothing registered; finish/free misuse is
 * harmless. */
static int case_api_edges(void)
{
    world w;
    conn *c;
    fp_relay z;
    int ok = 0, rc, bad_fd;

    CHECK(world_init(&w, 64 * KiB, 4) == 0, "engine: %s", strerror(errno));
    CHECK((c = conn_open(&w, 64 * KiB, NULL, NULL)), "setup: %s", strerror(errno));
    /* B is not a socket epoll accepts (a closed fd): -EBADF, A unregistered. */
    bad_fd = c->rb;
    close(c->rb);
    c->r.dir[0].dst = c->r.dir[1].src = bad_fd;
    rc = fp_engine_add(w.e, &c->r, 0, c);
    CHECK(rc == -EBADF, "add with a bad fd: %d", rc);
    CHECK(fp_engine_count(w.e) == 0 && c->r.eng_state == 0 && !c->r.pool, "half registered");
    c->rb = -1;
    /* The failed add left A unregistered: registering it again works. */
    c->rb = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(c->rb >= 0, "socket");
    fp_relay_init(&c->r, c->ra, c->rb, 64 * KiB);
    CHECK(conn_add(&w, c, 1) == 0, "second add failed");
    CHECK(fp_engine_add(w.e, &c->r, 0, c) == -EBUSY, "double add accepted");
    conn_finish(&w, c);
    conn_finish(&w, c); /* already finished: no-op */
    memset(&z, 0, sizeof(z));
    fp_engine_finish(w.e, &z); /* never added: no-op */
    CHECK(fp_engine_count(w.e) == 0, "count %u", fp_engine_count(w.e));
    CHECK_ENGINE(&w);
    DETAIL("bad fd -> -EBADF, nothing registered; double add -EBUSY; finish twice harmless");
    ok = 1;
out:
    world_free(&w);
    return ok;
}

static const tk_timed_case cases[] = {
    { "bulk 64 MiB both ways, counters", case_bulk },
    { "200 short connections request/response/close", case_short_many },
    { "A: 1000 bytes + RST in one wakeup", case_rst_behind_data_a },
    { "B: 40 KiB + RST in one wakeup", case_rst_behind_data_b },
    { "A: 1000 bytes + FIN in one wakeup", case_fin_behind_data_a },
    { "B: 40 KiB + FIN in one wakeup", case_fin_behind_data_b },
    { "half-close A->B, then B answers", case_half_close_ab },
    { "half-close B->A, then A answers", case_half_close_ba },
    { "backpressure A->B: stall quiet, resume", case_backpressure_ab },
    { "backpressure B->A: stall quiet, resume", case_backpressure_ba },
    { "100-byte sends, stalled receiver, unix: no spin", case_slot_stall_unix },
    { "100-byte sends, stalled receiver, tcp: no spin", case_slot_stall_tcp },
    { "200 queued skbs, one edge: short read not drained", case_slot_short_read },
    { "fairness: flood vs round trips, pending+more", case_fairness },
    { "connect in progress, request sent meanwhile", case_connect_progress },
    { "connect refused -> FP_END_CONNECT_FAIL", case_connect_refused },
    { "finish while connecting -> CONNECT_TIMEOUT", case_connect_timeout },
    { "run budget: 8 MiB per run, the rest deferred", case_run_budget },
    { "fp_engine_finish on a pending relay", case_finish_pending },
    { "fp_engine_finish on a queued finished relay", case_finish_queued },
    { "pipe pool: reuse across connections", case_pool_reuse },
    { "pipe pool: RST while stalled, pipe not pooled", case_pool_reset_with_bytes },
    { "pipe pool: never above pool_max", case_pool_max },
    { "fallback read()/write() under the engine", case_fallback },
    { "SIGPIPE not ignored: swallowed by the run", case_sigpipe },
    { "add errors, double add, finish twice", case_api_edges },
};

/* ---- benchmark ----------------------------------------------------------------- */

static int bench(int argc, char **argv);
static int bench_short_main(int argc, char **argv);

int main(int argc, char **argv)
{
    /* The worker's situation (CPython ignores SIGPIPE); case_sigpipe checks
     * the other one in a child. */
    signal(SIGPIPE, SIG_IGN);
    memset(flood_buf, 'f', sizeof(flood_buf));
    if (argc > 1 && !strcmp(argv[1], "--bench"))
        return bench(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "--bench-short"))
        return bench_short_main(argc, argv);
    tk_pat_init();
    /* ./test_engine -k WORD: only the cases whose name contains WORD. */
    return tk_run_timed(cases, TK_NELEM(cases), 50, argc > 2 && !strcmp(argv[1], "-k") ? argv[2] : NULL);
}

/* ---- benchmark ------------------------------------------------------------------
 *
 * Build without sanitizers for it:
 *   gcc -std=gnu99 -O2 -Icsrc -o /tmp/test_engine tests/c/test_engine.c csrc/\*.c -lpthread
 *
 * Three ways to move the bytes, alternated within each round so that load
 * from other tenants hits them alike:
 *   direct  the client talks to the server, no proxy (bulk only)
 *   engine  fp_engine: one edge-triggered epoll set, pipe pool
 *   lt      fp_relay_pump driven as the uvloop wrapper drives it today, in C:
 *           level-triggered epoll, one registration per fd brought in line
 *           with the pump's interests after every pump (libuv's epoll_ctl
 *           ADD/MOD/DEL, minus libuv's own ioctl(FIONBIO) and Python),
 *           removed before close, pipes made and closed per direction.
 * The proxy is always this (main) thread; syscalls are counted for it alone
 * with a perf counter on raw_syscalls:sys_enter (when the kernel allows).
 */

static int sc_open(void)
{
    static const char *paths[] = { "/sys/kernel/tracing/events/raw_syscalls/sys_enter/id",
                                   "/sys/kernel/debug/tracing/events/raw_syscalls/sys_enter/id" };
    struct perf_event_attr a;
    char buf[32];
    size_t k;

    for (k = 0; k < 2; k++) {
        FILE *f = fopen(paths[k], "r");
        long id;

        if (!f)
            continue;
        id = fgets(buf, sizeof(buf), f) ? strtol(buf, NULL, 10) : -1;
        fclose(f);
        if (id <= 0)
            continue;
        memset(&a, 0, sizeof(a));
        a.type = PERF_TYPE_TRACEPOINT;
        a.size = sizeof(a);
        a.config = (uint64_t)id;
        a.sample_period = 0;
        return (int)syscall(__NR_perf_event_open, &a, 0 /* this thread */, -1, -1, 0);
    }
    return -1;
}

/* Syscalls this thread made so far (the read itself included), or 0. */
static uint64_t sc_now(int fd)
{
    uint64_t v = 0;

    if (fd >= 0 && read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
        v = 0;
    return v;
}

/* ---- level-triggered driver, as the uvloop wrapper does it ---------------------- */

typedef struct lt_relay {
    fp_relay r;
    int want;               /* interests registered */
    uint32_t cur[2];        /* epoll bits registered per side */
    int connecting;
    int idx;
} lt_relay;

static uint32_t lt_bits(int want, int side)
{
    int rb = side ? FP_READ_B : FP_READ_A, wb = side ? FP_WRITE_B : FP_WRITE_A;

    return (uint32_t)(((want & rb) ? EPOLLIN : 0) | ((want & wb) ? EPOLLOUT : 0));
}

/* libuv: an fd with no interest left is removed (EPOLL_CTL_DEL). */
static void lt_apply(int ep, lt_relay *x, int want)
{
    int side;

    for (side = 0; side < 2; side++) {
        uint32_t bits = lt_bits(want, side);
        int fd = side ? x->r.dir[0].dst : x->r.dir[0].src;
        struct epoll_event ev;

        if (bits == x->cur[side])
            continue;
        memset(&ev, 0, sizeof(ev));
        ev.events = bits;
        ev.data.u64 = ((uint64_t)x->idx << 1) | (uint64_t)side;
        if (!bits)
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, &ev);
        else
            epoll_ctl(ep, x->cur[side] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
        x->cur[side] = bits;
    }
    x->want = want;
}

/* One LT event for x. Returns FP_END_* when x ended (sockets closed). */
static int lt_event(int ep, lt_relay *x, int side, uint32_t e)
{
    int rb = side ? FP_READ_B : FP_READ_A, wb = side ? FP_WRITE_B : FP_WRITE_A, bits = 0, res, a, b;

    if (e & (EPOLLERR | EPOLLHUP))
        bits = rb | wb;
    if (e & EPOLLIN)
        bits |= rb;
    if (e & EPOLLOUT)
        bits |= wb;
    bits &= x->want;
    if (!bits)
        return 0;
    a = x->r.dir[0].src;
    b = x->r.dir[0].dst;
    if (x->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);

        getsockopt(b, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err) {
            lt_apply(ep, x, 0);
            tk_sock_abort(a);
            close(b);
            return FP_END_CONNECT_FAIL;
        }
        x->connecting = 0;
        lt_apply(ep, x, fp_relay_start(&x->r));
        return 0;
    }
    res = fp_relay_pump(&x->r, bits);
    if (res & (FP_RELAY_DONE | FP_RELAY_RESET)) {
        lt_apply(ep, x, 0);
        fp_relay_free(&x->r);
        if (res & FP_RELAY_DONE) {
            close(a);
            close(b);
            return FP_END_DONE;
        }
        tk_sock_abort(a);
        tk_sock_abort(b);
        return FP_END_RESET;
    }
    if (res != x->want)
        lt_apply(ep, x, res);
    return 0;
}

/* ---- bulk ------------------------------------------------------------------------ */

typedef struct bulk_res {
    double gibps, cpu;      /* GiB/s; the proxy thread's CPU seconds */
    uint64_t syscalls, pumps, runs;
    int ok;
} bulk_res;

enum { M_DIRECT, M_ENGINE, M_LT };

static bulk_res bench_bulk(int mode, uint64_t bytes, size_t chunk, int scfd)
{
    bulk_res res = { 0 };
    tk_xfer tx = { 0 }, rx = { 0 };
    pthread_t t1, t2;
    int pa = -1, ra = -1, rb = -1, pb = -1, ended = 0;
    double t0, cpu0;
    uint64_t sc0;

    if (mode == M_DIRECT) {
        if (tk_tcp_pair(&pa, &pb, NULL) < 0)
            return res;
    } else if (tk_tcp_pair(&pa, &ra, NULL) < 0 || tk_tcp_pair(&rb, &pb, NULL) < 0) {
        return res;
    }
    tk_set_nonblock(pa, 0);
    tk_set_nonblock(pb, 0);
    tk_set_timeouts(pa, 30);
    tk_set_timeouts(pb, 30);
    if (mode != M_DIRECT)
        shutdown(pb, SHUT_WR); /* one way: B -> A is empty */
    tx = (tk_xfer){ .fd = pa, .buf = flood_buf, .len = sizeof(flood_buf), .bytes = bytes };
    rx.fd = pb;
    t0 = tk_now();
    cpu0 = tk_thread_cpu();
    sc0 = sc_now(scfd);
    pthread_create(&t2, NULL, tk_xfer_recv, &rx);
    pthread_create(&t1, NULL, tk_xfer_send, &tx);
    if (mode == M_ENGINE) {
        fp_engine *e = fp_engine_new(chunk, 8);
        fp_relay r;
        fp_finished out[1];
        int more = 0;
        fp_engine_stats st;

        fp_relay_init(&r, ra, rb, chunk);
        if (e && fp_engine_add(e, &r, 0, NULL) == 0) {
            while (!ended) {
                struct pollfd p = { fp_engine_fd(e), POLLIN, 0 };

                if (!more && poll(&p, 1, 10000) <= 0)
                    break;
                if (fp_engine_run(e, out, 1, &more) == 1)
                    ended = out[0].how;
            }
            fp_engine_get_stats(e, &st);
            res.pumps = st.pumps;
            res.runs = st.runs;
        }
        if (!ended) {
            fp_engine_finish(e, &r);
            ended = -1;
        }
        fp_engine_free(e);
        ra = rb = -1;
    } else if (mode == M_LT) {
        int ep = epoll_create1(EPOLL_CLOEXEC);
        lt_relay x;
        struct epoll_event evs[4];

        memset(&x, 0, sizeof(x));
        fp_relay_init(&x.r, ra, rb, chunk);
        lt_apply(ep, &x, fp_relay_start(&x.r));
        while (!ended) {
            int n = epoll_wait(ep, evs, 4, 10000), k;

            res.runs++;
            if (n <= 0)
                break;
            for (k = 0; k < n && !ended; k++) {
                ended = lt_event(ep, &x, (int)(evs[k].data.u64 & 1), evs[k].events);
                res.pumps++;
            }
        }
        if (!ended) {
            fp_relay_free(&x.r);
            close(ra);
            close(rb);
            ended = -1;
        }
        close(ep);
        ra = rb = -1;
    }
    if (mode != M_DIRECT) {
        res.cpu = tk_thread_cpu() - cpu0;
        res.syscalls = sc_now(scfd) - sc0;
    }
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    close(pa);
    close(pb);
    res.ok = rx.done == bytes && !tx.err && !rx.err && (mode == M_DIRECT || ended == FP_END_DONE);
    res.gibps = (double)bytes / (double)(1 << 30) / (rx.t_end - t0);
    return res;
}

/* ---- short connections ------------------------------------------------------------- */

#define REQ_LEN 13

typedef struct upstream {
    int l;
    struct sockaddr_in sa;
    int stop;               /* atomic */
    uint64_t served;
} upstream;

/* The server: reads the 13-byte request, answers 13 bytes, closes on EOF. */
static void *upstream_thread(void *arg)
{
    upstream *u = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev, evs[64];
    static int got[65536];

    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = u->l;
    epoll_ctl(ep, EPOLL_CTL_ADD, u->l, &ev);
    while (!__atomic_load_n(&u->stop, __ATOMIC_RELAXED)) {
        int n = epoll_wait(ep, evs, 64, 50), k;

        for (k = 0; k < n; k++) {
            int fd = evs[k].data.fd;

            if (fd == u->l) {
                int c;

                while ((c = accept4(u->l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    if (c >= 65536) {
                        close(c);
                        continue;
                    }
                    tk_set_nodelay(c);
                    got[c] = 0;
                    ev.events = EPOLLIN;
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            for (;;) {
                char buf[256];
                ssize_t r = recv(fd, buf, sizeof(buf), 0);

                if (r > 0) {
                    if (got[fd] < REQ_LEN && got[fd] + r >= REQ_LEN) {
                        send(fd, "HTTP/1.0 200\n", REQ_LEN, MSG_NOSIGNAL);
                        u->served++;
                    }
                    got[fd] += (int)r;
                    continue;
                }
                if (r < 0 && errno == EAGAIN)
                    break;
                close(fd); /* EOF (or error): removed from epoll by close */
                break;
            }
        }
    }
    close(ep);
    return NULL;
}

typedef struct client {
    struct sockaddr_in proxy;
    int total, parallel;
    int done, failed;       /* done: atomic */
    double t_end;
} client;

/* The clients: `parallel` at a time, connect, 13-byte request, 13-byte
 * response, close; until `total` completed. */
static void *client_thread(void *arg)
{
    client *cl = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC), started = 0, live = 0;
    static int got[65536], sent[65536];
    struct epoll_event ev, evs[64];
    double deadline = tk_now() + 120;

    while ((cl->done + cl->failed < cl->total) && tk_now() < deadline) {
        int n, k;

        while (live < cl->parallel && started < cl->total) {
            int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

            if (c < 0 || c >= 65536) {
                if (c >= 0)
                    close(c);
                cl->failed++;
                started++;
                continue;
            }
            tk_set_nodelay(c);
            if (connect(c, (struct sockaddr *)&cl->proxy, sizeof(cl->proxy)) < 0 && errno != EINPROGRESS) {
                close(c);
                cl->failed++;
                started++;
                continue;
            }
            got[c] = sent[c] = 0;
            memset(&ev, 0, sizeof(ev));
            ev.events = EPOLLOUT | EPOLLIN;
            ev.data.fd = c;
            epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
            started++;
            live++;
        }
        n = epoll_wait(ep, evs, 64, 100);
        for (k = 0; k < n; k++) {
            int c = evs[k].data.fd;
            char buf[64];
            ssize_t r;

            if ((evs[k].events & (EPOLLERR | EPOLLHUP)) && !(evs[k].events & EPOLLIN)) {
                close(c);
                live--;
                cl->failed++;
                continue;
            }
            if (!sent[c] && (evs[k].events & EPOLLOUT)) {
                send(c, "GET / HTTP/1\n", REQ_LEN, MSG_NOSIGNAL);
                sent[c] = 1;
                ev.events = EPOLLIN;
                ev.data.fd = c;
                epoll_ctl(ep, EPOLL_CTL_MOD, c, &ev);
            }
            if (!(evs[k].events & EPOLLIN))
                continue;
            r = recv(c, buf, sizeof(buf), 0);
            if (r > 0)
                got[c] += (int)r;
            if (got[c] >= REQ_LEN || r == 0 || (r < 0 && errno != EAGAIN)) {
                close(c);
                live--;
                if (got[c] >= REQ_LEN)
                    __atomic_store_n(&cl->done, cl->done + 1, __ATOMIC_RELAXED);
                else
                    cl->failed++;
            }
        }
    }
    cl->t_end = tk_now();
    close(ep);
    return NULL;
}

typedef struct short_res {
    double rate;            /* connections per second */
    double cpu_us;          /* proxy thread CPU microseconds per connection */
    double syscalls;        /* proxy thread syscalls per connection */
    double pumps, runs;     /* per connection */
    uint64_t pipes_created;
    int done, failed, ended_bad;
    int ok;
} short_res;

/* The proxy in this thread: accept, connect upstream, relay, until the
 * clients are through. */
static short_res bench_short(int lt, int total, int parallel, int scfd)
{
    short_res res = { 0 };
    upstream up = { 0 };
    client cl = { 0 };
    pthread_t tu, tc;
    int l, ep = -1, lt_live = 0, more = 0, k;
    fp_engine *e = NULL;
    fp_relay **free_r = NULL;
    lt_relay **lts = NULL;
    int nfree = 0, cap = parallel * 4 + 64, ended = 0;
    double t0, cpu0;
    uint64_t sc0, pumps = 0, runs = 0;

    up.l = tk_listener(&up.sa, 4096, 0, 0);
    l = tk_listener(&cl.proxy, 4096, 0, 0);
    if (up.l < 0 || l < 0)
        return res;
    tk_set_nonblock(up.l, 1);
    tk_set_nonblock(l, 1);
    cl.total = total;
    cl.parallel = parallel;
    /* Relay memory: a free list of preallocated relays, as the wrapper's
     * objects would be. */
    if (lt) {
        lts = calloc((size_t)cap, sizeof(*lts));
        for (k = 0; lts && k < cap; k++) {
            lts[k] = calloc(1, sizeof(lt_relay));
            lts[k]->idx = k;
        }
        ep = epoll_create1(EPOLL_CLOEXEC);
    } else {
        free_r = calloc((size_t)cap, sizeof(*free_r));
        for (k = 0; free_r && k < cap; k++)
            free_r[nfree++] = calloc(1, sizeof(fp_relay));
        e = fp_engine_new(65536, 256);
    }
    pthread_create(&tu, NULL, upstream_thread, &up);
    t0 = tk_now();
    cpu0 = tk_thread_cpu();
    sc0 = sc_now(scfd);
    pthread_create(&tc, NULL, client_thread, &cl);
    while (tk_now() - t0 < 180) {
        struct pollfd pf[2];
        int fds[64], n, i;

        if (__atomic_load_n(&cl.done, __ATOMIC_RELAXED) + cl.failed >= total &&
            (lt ? lt_live == 0 : fp_engine_count(e) == 0))
            break;
        pf[0].fd = l;
        pf[0].events = POLLIN;
        pf[1].fd = lt ? ep : fp_engine_fd(e);
        pf[1].events = POLLIN;
        pf[0].revents = pf[1].revents = 0;
        if (poll(pf, 2, more ? 0 : 100) < 0)
            continue;
        if (pf[0].revents & POLLIN) {
            n = fp_accept_batch(l, fds, 64);
            for (i = 0; i < n; i++) {
                fp_addr dst;
                int inprog = 0, u;

                memset(&dst, 0, sizeof(dst));
                dst.family = AF_INET;
                dst.port = ntohs(up.sa.sin_port);
                memcpy(dst.ip, &up.sa.sin_addr, 4);
                u = fp_connect(&dst, NULL, &inprog);
                if (u < 0) {
                    fp_sock_abort(fds[i]);
                    ended++;
                    continue;
                }
                if (lt) {
                    lt_relay *x = NULL;

                    for (k = 0; k < cap; k++)
                        if (!lts[k]->want && !lts[k]->connecting) {
                            x = lts[k];
                            break;
                        }
                    if (!x) {
                        fp_sock_abort(fds[i]);
                        close(u);
                        continue;
                    }
                    k = x->idx;
                    memset(x, 0, sizeof(*x));
                    x->idx = k;
                    fp_relay_init(&x->r, fds[i], u, 65536);
                    x->connecting = inprog;
                    lt_apply(ep, x, inprog ? FP_WRITE_B : fp_relay_start(&x->r));
                    lt_live++;
                } else {
                    fp_relay *r = nfree ? free_r[--nfree] : NULL;

                    if (!r) {
                        fp_sock_abort(fds[i]);
                        close(u);
                        continue;
                    }
                    fp_relay_init(r, fds[i], u, 65536);
                    if (fp_engine_add(e, r, inprog, NULL) < 0) {
                        fp_sock_abort(fds[i]);
                        close(u);
                        free_r[nfree++] = r;
                    }
                }
            }
        }
        if (lt) {
            struct epoll_event evs[256];

            if (!(pf[1].revents & POLLIN))
                continue;
            n = epoll_wait(ep, evs, 256, 0);
            runs++;
            for (i = 0; i < n; i++) {
                lt_relay *x = lts[evs[i].data.u64 >> 1];
                int how;

                if (!x->want)
                    continue; /* ended earlier in this batch */
                how = lt_event(ep, x, (int)(evs[i].data.u64 & 1), evs[i].events);
                pumps++;
                if (how) {
                    x->want = 0;
                    x->connecting = 0;
                    lt_live--;
                    ended++;
                    if (how != FP_END_DONE)
                        res.ended_bad++;
                }
            }
        } else if ((pf[1].revents & POLLIN) || more) {
            fp_finished out[64];

            n = fp_engine_run(e, out, 64, &more);
            for (i = 0; i < n; i++) {
                if (out[i].how != FP_END_DONE)
                    res.ended_bad++;
                free_r[nfree++] = out[i].relay;
                ended++;
            }
        }
    }
    res.syscalls = (double)(sc_now(scfd) - sc0);
    res.cpu_us = (tk_thread_cpu() - cpu0) * 1e6;
    pthread_join(tc, NULL);
    __atomic_store_n(&up.stop, 1, __ATOMIC_RELAXED);
    pthread_join(tu, NULL);
    res.done = cl.done;
    res.failed = cl.failed;
    res.rate = cl.done / (cl.t_end - t0);
    if (e) {
        fp_engine_stats st;

        fp_engine_get_stats(e, &st);
        pumps = st.pumps;
        runs = st.runs;
        res.pipes_created = st.pipes_created;
        for (k = 0; k < cap; k++) {
            /* every relay came back: the engine reported it */
        }
    }
    res.syscalls = cl.done ? res.syscalls / cl.done : 0;
    res.cpu_us = cl.done ? res.cpu_us / cl.done : 0;
    res.pumps = cl.done ? (double)pumps / cl.done : 0;
    res.runs = cl.done ? (double)runs / cl.done : 0;
    res.ok = cl.done == total && !cl.failed && !res.ended_bad;
    if (lt) {
        for (k = 0; k < cap; k++)
            free(lts[k]);
        free(lts);
        close(ep);
    } else {
        fp_engine_free(e);
        for (k = 0; k < nfree; k++)
            free(free_r[k]);
        free(free_r);
    }
    close(l);
    close(up.l);
    return res;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), tk_cmp_double);
    return v[n / 2];
}

#define BROUNDS_MAX 15

static void print_short(const char *name, const short_res *r)
{
    printf("%-7s %9.0f conn/s  %6.2f syscalls/conn  %5.1f us CPU/conn  %5.2f pumps/conn  %5.3f runs/conn  "
           "%llu pipes made  %s\n", name, r->rate, r->syscalls, r->cpu_us, r->pumps, r->runs,
           (unsigned long long)r->pipes_created, r->ok ? "ok" : "FAILED");
}

/* ./test_engine --bench [MiB] [rounds] [conns] [parallel] */
static int bench(int argc, char **argv)
{
    static const int modes[3] = { M_DIRECT, M_ENGINE, M_LT };
    static const char *names[3] = { "direct", "engine", "lt" };
    double g[3][BROUNDS_MAX], ratio[3][BROUNDS_MAX];
    double cpu[3] = { 0 }, sysc[3] = { 0 }, pumps[3] = { 0 }, runs[3] = { 0 };
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024, bytes;
    int rounds = argc > 3 ? atoi(argv[3]) : 3, total = argc > 4 ? atoi(argv[4]) : 20000;
    int parallel = argc > 5 ? atoi(argv[5]) : 64, i, m, scfd = sc_open();

    if (rounds < 1 || rounds > BROUNDS_MAX || mib < 1 || total < 1 || parallel < 1 || parallel > 4096) {
        fprintf(stderr, "usage: %s --bench [MiB] [rounds 1..%d] [conns] [parallel]\n", argv[0], BROUNDS_MAX);
        return 2;
    }
    bytes = mib * MiB;
    printf("bulk: %llu MiB one way over 127.0.0.1, 64 KiB pipes, %d rounds, %ld CPUs, syscall counter %s\n",
           (unsigned long long)mib, rounds, sysconf(_SC_NPROCESSORS_ONLN), scfd >= 0 ? "on" : "off");
    for (i = 0; i < rounds; i++) {
        bulk_res r[3], d2;
        double base;

        for (m = 0; m < 3; m++) {
            r[m] = bench_bulk(modes[m], bytes, 64 * KiB, scfd);
            if (!r[m].ok) {
                printf("%s: transfer failed\n", names[m]);
                return 1;
            }
        }
        d2 = bench_bulk(M_DIRECT, bytes, 0, scfd);
        if (!d2.ok) {
            printf("direct: transfer failed\n");
            return 1;
        }
        base = (r[0].gibps + d2.gibps) / 2;
        printf("round %d: direct %.2f/%.2f GiB/s | engine %.2f (x%.2f) | lt %.2f (x%.2f)\n", i + 1, r[0].gibps,
               d2.gibps, r[1].gibps, r[1].gibps / base, r[2].gibps, r[2].gibps / base);
        fflush(stdout);
        for (m = 0; m < 3; m++) {
            g[m][i] = m ? r[m].gibps : base;
            ratio[m][i] = g[m][i] / base;
            cpu[m] += r[m].cpu;
            sysc[m] += (double)r[m].syscalls;
            pumps[m] += (double)r[m].pumps;
            runs[m] += (double)r[m].runs;
        }
    }
    printf("\n%-7s %7s %9s %10s %12s %10s %14s\n", "mode", "GiB/s", "ratio", "CPU s/GiB", "syscalls/GiB",
           "pumps/GiB", "runs|waits/GiB");
    for (m = 0; m < 3; m++) {
        double gib = (double)bytes * rounds / (double)(1 << 30);

        printf("%-7s %7.2f %9.2f", names[m], median(g[m], rounds), median(ratio[m], rounds));
        if (m)
            printf(" %10.3f %12.0f %10.0f %14.0f", cpu[m] / gib, sysc[m] / gib, pumps[m] / gib, runs[m] / gib);
        printf("\n");
    }
    printf("\nshort connections: %d x (connect, %d-byte request, %d-byte response, close), %d in parallel\n", total,
           REQ_LEN, REQ_LEN, parallel);
    printf("(proxy thread: accept4 + TCP_NODELAY, socket + TCP_NODELAY + connect upstream, then the relay)\n");
    for (i = 0; i < rounds; i++) {
        short_res s = bench_short(0, total, parallel, scfd), t = bench_short(1, total, parallel, scfd);

        print_short("engine", &s);
        print_short("lt", &t);
        fflush(stdout);
        if (!s.ok || !t.ok)
            return 1;
    }
    if (scfd >= 0)
        close(scfd);
    return 0;
}

/* ./test_engine --bench-short [conns] [parallel] [lt]: one run, for strace -c. */
static int bench_short_main(int argc, char **argv)
{
    int total = argc > 2 ? atoi(argv[2]) : 20000, parallel = argc > 3 ? atoi(argv[3]) : 64;
    int lt = argc > 4 && !strcmp(argv[4], "lt"), scfd = sc_open();
    short_res s;

    if (total < 1 || parallel < 1 || parallel > 4096)
        return 2;
    s = bench_short(lt, total, parallel, scfd);
    print_short(lt ? "lt" : "engine", &s);
    if (scfd >= 0)
        close(scfd);
    return s.ok ? 0 : 1;
}
