/* test_relay.c - csrc/relay.c against real sockets on 127.0.0.1.
 *
 * Topology of every case:
 *
 *     peer A  <-- conn 1 -->  [ra | relay | rb]  <-- conn 2 -->  peer B
 *
 * The peers are scripted non-blocking sockets (send N bytes of a known
 * pattern, maybe half-close, maybe reset, maybe stop reading) and the relay
 * is driven exactly as the uvloop wrapper drives it: a level-triggered loop
 * (poll() here) turns readiness into FP_READ_x / FP_WRITE_x bits, and the
 * mask the pump returns becomes the next interest set. Everything runs in
 * one thread, so every case is bounded by an iteration count and a deadline.
 * Received bytes are compared with the sender's pattern, byte for byte.
 *
 *   ./test_relay                    the table of cases; last line "N passed, M failed"
 *   ./test_relay --bench [MiB] [rounds]
 *                                   relay vs direct loopback TCP throughput
 *                                   (build with -O2 and no sanitizers for it)
 */
#define TESTKIT_GOTO_CHECKS 1 /* CHECK(cond, fmt, ...): reason to tk_why, goto out */
#include "testkit.h"

#include "relay.h"

#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/wait.h>

/* ---- the rig: two peers and the relay between them ---------------------- */

typedef struct rig {
    tk_peer pa, pb;
    int ra, rb;             /* the relay's sockets (side A, side B) */
    fp_relay r;
    int live;               /* r is initialised and not yet freed */
    int want;               /* interests from the last pump */
    int result;             /* 0, FP_RELAY_DONE or FP_RELAY_RESET */
    int split;              /* one pump per readiness bit, as the uvloop wrapper does */
    int spurious;           /* OR every bit in now and then */
    unsigned long iters, pumps;
    size_t max_cap[2], max_in_flight[2];
    char viol[160];         /* first invariant violation seen */
} rig;

enum { T_TCP, T_UNIX };
#define SMALL_BUF 4096

/* small: -1, or the direction whose downstream buffers (the relay's dst
 * send buffer, the receiving peer's receive buffer) are made tiny, so that
 * backpressure reaches the pipe after a few KiB. */
static int rig_setup_small(rig *g, int type, size_t chunk, int small)
{
    int pa, pb, s1 = small == 1 ? SMALL_BUF : 0, s0 = small == 0 ? SMALL_BUF : 0;

    memset(g, 0, sizeof(*g));
    g->ra = g->rb = -1;
    g->pa.fd = g->pb.fd = -1;
    if (type == T_TCP) {
        tk_bufs a = { s1, 0, 0, s1 }, b = { 0, s0, s0, 0 };

        if (tk_tcp_pair(&pa, &g->ra, &a) < 0)
            return -1;
        if (tk_tcp_pair(&g->rb, &pb, &b) < 0)
            return -1;
    } else {
        if (tk_unix_pair(&pa, &g->ra) < 0)
            return -1;
        if (tk_unix_pair(&g->rb, &pb) < 0)
            return -1;
    }
    tk_peer_init(&g->pa, pa, 1, 777);
    tk_peer_init(&g->pb, pb, 777, 1);
    g->pa.burst = g->pb.burst = 256;
    fp_relay_init(&g->r, g->ra, g->rb, chunk);
    g->live = 1;
    g->want = fp_relay_start(&g->r);
    return 0;
}

static int rig_setup(rig *g, int type, size_t chunk)
{
    return rig_setup_small(g, type, chunk, -1);
}

static void rig_teardown(rig *g)
{
    if (g->live)
        fp_relay_free(&g->r);
    g->live = 0;
    if (g->ra >= 0)
        close(g->ra);
    if (g->rb >= 0)
        close(g->rb);
    if (g->pa.fd >= 0)
        close(g->pa.fd);
    if (g->pb.fd >= 0)
        close(g->pb.fd);
    g->ra = g->rb = g->pa.fd = g->pb.fd = -1;
}

/* Keeps the first invariant violation seen. */
#define violation(g, ...) tk_keep_first((g)->viol, sizeof((g)->viol), __VA_ARGS__)

/* What must hold after every non-terminal pump. */
static void check_invariants(rig *g, int res)
{
    static const int rd[2] = { FP_READ_A, FP_READ_B }, wr[2] = { FP_WRITE_B, FP_WRITE_A };
    int i;

    if (!(res & FP_WANT_MASK) || (res & ~FP_WANT_MASK))
        violation(g, "pump returned 0x%x", res);
    for (i = 0; i < 2; i++) {
        const fp_relay_dir *d = &g->r.dir[i];

        if (d->pipe_cap > g->max_cap[i])
            g->max_cap[i] = d->pipe_cap;
        if (d->in_flight > g->max_in_flight[i])
            g->max_in_flight[i] = d->in_flight;
        if (!(d->flags & FP_DIR_FALLBACK) && d->in_flight > d->pipe_cap)
            violation(g, "dir %d: in_flight %zu > pipe_cap %zu", i, d->in_flight, d->pipe_cap);
        if ((d->flags & FP_DIR_FALLBACK) && d->in_flight > d->pipe_cap + g->r.chunk)
            violation(g, "dir %d: fallback holds %zu bytes", i, d->in_flight);
        if ((res & rd[i]) && (d->flags & FP_DIR_EOF))
            violation(g, "dir %d: asks to read after EOF", i);
        if ((res & rd[i]) && d->pipe_cap && d->in_flight >= d->pipe_cap)
            violation(g, "dir %d: asks to read with a full pipe", i);
        if (d->in_flight && !(res & wr[i]))
            violation(g, "dir %d: holds %zu bytes but does not ask to write", i, d->in_flight);
        if ((d->flags & FP_DIR_SHUT) && (d->in_flight || d->pipe_cap || d->buf))
            violation(g, "dir %d: shut but still holds resources", i);
    }
}

static void rig_finish(rig *g, int res)
{
    g->result = res;
    fp_relay_free(&g->r);
    g->live = 0;
    if (res == FP_RELAY_RESET) {
        tk_sock_abort(g->ra);
        tk_sock_abort(g->rb);
    } else {
        close(g->ra);
        close(g->rb);
    }
    g->ra = g->rb = -1;
}

static void rig_pump(rig *g, int ev)
{
    int res;

    if (g->result || !ev)
        return;
    res = fp_relay_pump(&g->r, ev);
    g->pumps++;
    if (res & (FP_RELAY_DONE | FP_RELAY_RESET)) {
        if (res & FP_WANT_MASK)
            violation(g, "terminal result with want bits 0x%x", res);
        rig_finish(g, res & (FP_RELAY_DONE | FP_RELAY_RESET));
        return;
    }
    check_invariants(g, res);
    g->want = res;
}

/* Readiness -> FP bits for one relay fd. On POLLERR/POLLHUP, like libuv, the
 * callback of every registered interest runs and the syscall finds out. */
static int fd_bits(short re, int rbit, int wbit, int want)
{
    int e = 0;

    if (re & (POLLERR | POLLHUP))
        e = rbit | wbit;
    if (re & POLLIN)
        e |= rbit;
    if (re & POLLOUT)
        e |= wbit;
    return e & want;
}

/* One loop turn. Returns how many fds were ready (0: quiet for timeout_ms). */
static int rig_step(rig *g, int timeout_ms)
{
    static const int order[4] = { FP_READ_A, FP_WRITE_A, FP_READ_B, FP_WRITE_B };
    struct pollfd pf[4];
    int n, ev, k;

    tk_peer_pre(&g->pa);
    tk_peer_pre(&g->pb);
    pf[0].fd = g->pa.fd;
    pf[0].events = tk_peer_events(&g->pa);
    pf[1].fd = g->pb.fd;
    pf[1].events = tk_peer_events(&g->pb);
    pf[2].fd = g->result ? -1 : g->ra;
    pf[2].events = (short)(((g->want & FP_READ_A) ? POLLIN : 0) | ((g->want & FP_WRITE_A) ? POLLOUT : 0));
    pf[3].fd = g->result ? -1 : g->rb;
    pf[3].events = (short)(((g->want & FP_READ_B) ? POLLIN : 0) | ((g->want & FP_WRITE_B) ? POLLOUT : 0));
    for (k = 0; k < 4; k++) {
        if (!pf[k].events)
            pf[k].fd = -1; /* else poll() would keep reporting POLLHUP for it */
        pf[k].revents = 0;
    }
    g->iters++;
    n = poll(pf, 4, timeout_ms);
    if (n <= 0)
        return 0;
    if (pf[0].revents)
        tk_peer_recv(&g->pa), tk_peer_send(&g->pa);
    if (pf[1].revents)
        tk_peer_recv(&g->pb), tk_peer_send(&g->pb);
    ev = fd_bits(pf[2].revents, FP_READ_A, FP_WRITE_A, g->want) |
         fd_bits(pf[3].revents, FP_READ_B, FP_WRITE_B, g->want);
    if (g->spurious && g->iters % 3 == 0)
        ev |= FP_WANT_MASK;
    if (g->split) {
        for (k = 0; k < 4 && !g->result; k++)
            if (ev & order[k] & (g->want | (g->spurious ? FP_WANT_MASK : 0)))
                rig_pump(g, order[k]);
    } else {
        rig_pump(g, ev);
    }
    return n;
}

/* Runs until done(g) or the deadline; returns 1 if done(g) came true. */
static int rig_run(rig *g, int (*done)(rig *), double seconds)
{
    double end = tk_now() + seconds;
    unsigned long turns;

    for (turns = 0; turns < 50000000UL; turns++) {
        if (done(g))
            return 1;
        if (tk_now() > end)
            return 0;
        rig_step(g, 200);
    }
    return 0;
}

/* Runs until nothing at all happens for quiet_ms (the relay and peers are
 * waiting on each other). Returns 1 on quiet, 0 on deadline. */
static int rig_run_quiet(rig *g, int quiet_ms, double seconds)
{
    double end = tk_now() + seconds;

    while (tk_now() < end)
        if (rig_step(g, quiet_ms) == 0)
            return 1;
    return 0;
}

static int all_done(rig *g)
{
    return g->result && tk_peer_done(&g->pa) && tk_peer_done(&g->pb);
}

static int a_has_err(rig *g)
{
    return g->result && (g->pa.first_err || g->pa.fd < 0);
}

static int b_has_err(rig *g)
{
    return g->result && (g->pb.first_err || g->pb.fd < 0);
}

/* ---- cases -------------------------------------------------------------- */

/* The common end-of-transfer checks: DONE, every byte in order, EOF seen. */
#define CHECK_DELIVERED(g)                                                                    \
    do {                                                                                      \
        CHECK(!(g)->viol[0], "invariant: %s", (g)->viol);                                      \
        CHECK((g)->result == FP_RELAY_DONE, "result 0x%x (error %d side %d)", (g)->result,    \
              (g)->r.error, (g)->r.reset_side);                                               \
        CHECK(!(g)->pa.mismatch && !(g)->pb.mismatch, "byte mismatch at %llu/%llu",           \
              (unsigned long long)(g)->pa.mismatch_at, (unsigned long long)(g)->pb.mismatch_at); \
        CHECK((g)->pb.received == (g)->pa.send_total && (g)->pa.received == (g)->pb.send_total, \
              "received %llu/%llu of %llu/%llu", (unsigned long long)(g)->pb.received,         \
              (unsigned long long)(g)->pa.received, (unsigned long long)(g)->pa.send_total,    \
              (unsigned long long)(g)->pb.send_total);                                        \
        CHECK((g)->pa.got_eof && (g)->pb.got_eof, "EOF not propagated (a %d b %d)",            \
              (g)->pa.got_eof, (g)->pb.got_eof);                                              \
        CHECK(!(g)->pa.first_err && !(g)->pb.first_err, "peer error %d/%d",                    \
              (g)->pa.first_err, (g)->pb.first_err);                                          \
    } while (0)

static void two_way(rig *g, uint64_t ab, uint64_t ba)
{
    g->pa.send_total = ab;
    g->pb.send_total = ba;
    g->pa.shut_after_send = g->pb.shut_after_send = 1;
}

static int case_bulk_tcp(void)
{
    rig g;
    fp_counter c_ab = 0, c_ba = 0, c_total = 0;
    const uint64_t n = 64 * MiB;
    double t0;
    int ok = 0;

    CHECK(rig_setup(&g, T_TCP, 256 * KiB) == 0, "setup: %s", strerror(errno));
    g.split = 1;
    g.r.dir[0].ctr[0] = &c_ab;
    g.r.dir[0].ctr[1] = &c_total;
    g.r.dir[1].ctr[0] = &c_ba;
    g.r.dir[1].ctr[1] = &c_total;
    two_way(&g, n, n);
    t0 = tk_now();
    CHECK(rig_run(&g, all_done, 120), "timeout: result 0x%x, a got %llu b got %llu", g.result,
          (unsigned long long)g.pa.received, (unsigned long long)g.pb.received);
    CHECK_DELIVERED(&g);
    CHECK(g.r.dir[0].spliced == n && g.r.dir[1].spliced == n, "spliced %llu/%llu",
          (unsigned long long)g.r.dir[0].spliced, (unsigned long long)g.r.dir[1].spliced);
    CHECK(!g.r.dir[0].copied && !g.r.dir[1].copied, "copied bytes on a splice path");
    CHECK(c_ab == n && c_ba == n && c_total == 2 * n, "counters %llu %llu %llu",
          (unsigned long long)c_ab, (unsigned long long)c_ba, (unsigned long long)c_total);
    CHECK(g.max_cap[0] == 256 * KiB && g.max_cap[1] == 256 * KiB, "pipe_cap %zu/%zu",
          g.max_cap[0], g.max_cap[1]);
    CHECK(g.r.activity > 0 && g.r.activity <= g.pumps, "activity %u pumps %lu", g.r.activity, g.pumps);
    DETAIL("2 x 64 MiB in %.2fs, %lu pumps, activity %u", tk_now() - t0, g.pumps, g.r.activity);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_bulk_unix(void)
{
    rig g;
    const uint64_t n = 16 * MiB;
    int ok = 0;

    CHECK(rig_setup(&g, T_UNIX, 64 * KiB) == 0, "setup: %s", strerror(errno));
    two_way(&g, n, n + 12345);
    CHECK(rig_run(&g, all_done, 60), "timeout: result 0x%x", g.result);
    CHECK_DELIVERED(&g);
    CHECK(g.r.dir[0].spliced == n && g.r.dir[1].spliced == n + 12345, "not all spliced");
    DETAIL("16 MiB each way, %lu pumps", g.pumps);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

/* One side sends its request and half-closes; the other answers only after
 * it saw that EOF, so the answer flows through a relay with one direction
 * already shut. */
static int half_close(int first_is_a)
{
    rig g;
    tk_peer *first, *second;
    int ok = 0, first_dir = first_is_a ? 0 : 1;

    CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
    g.split = 1;
    first = first_is_a ? &g.pa : &g.pb;
    second = first_is_a ? &g.pb : &g.pa;
    first->send_total = 1 * MiB + 7;
    first->shut_after_send = 1;
    second->send_total = 8 * MiB;
    second->send_after_eof = 1;
    second->shut_after_send = 1;
    CHECK(rig_run(&g, all_done, 60), "timeout: result 0x%x, first got %llu eof %d", g.result,
          (unsigned long long)first->received, first->got_eof);
    CHECK_DELIVERED(&g);
    CHECK(second->sent == 8 * MiB, "answer not sent");
    DETAIL("dir %d shut first, %llu bytes answered after it", first_dir, (unsigned long long)second->sent);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_half_close_ab(void) { return half_close(1); }
static int case_half_close_ba(void) { return half_close(0); }

static int case_both_close_empty(void)
{
    rig g;
    int ok = 0;

    CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
    two_way(&g, 0, 0);
    CHECK(rig_run(&g, all_done, 10), "timeout: result 0x%x", g.result);
    CHECK_DELIVERED(&g);
    CHECK(g.pumps <= 4, "%lu pumps for two EOFs", g.pumps);
    DETAIL("DONE after %lu pumps", g.pumps);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

/* One peer resets (SO_LINGER 0 close) mid-transfer. The relay must return
 * FP_RELAY_RESET naming that side, and once the caller aborts both sockets
 * the other peer must see ECONNRESET, not a clean EOF. */
static int reset_case(int b_resets, int idle)
{
    rig g;
    tk_peer *rst, *other;
    int ok = 0, side = b_resets ? 1 : 0;

    CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
    rst = b_resets ? &g.pb : &g.pa;
    other = b_resets ? &g.pa : &g.pb;
    if (idle) {
        rst->rst_after = 0; /* nothing in flight: the relay only waits to read */
    } else {
        other->send_total = 4 * MiB;
        rst->send_total = 256 * KiB;
        rst->rst_after = 64 * KiB;
    }
    CHECK(rig_run(&g, b_resets ? a_has_err : b_has_err, 30),
          "timeout: result 0x%x other err %d", g.result, other->first_err);
    CHECK(!g.viol[0], "invariant: %s", g.viol);
    CHECK(g.result == FP_RELAY_RESET, "result 0x%x", g.result);
    CHECK(g.r.reset_side == side, "reset_side %d, want %d", g.r.reset_side, side);
    CHECK(g.r.error == ECONNRESET || g.r.error == EPIPE, "error %s", strerror(g.r.error));
    CHECK(other->first_err == ECONNRESET, "other peer saw %s (eof %d)",
          other->first_err ? strerror(other->first_err) : "no error", other->got_eof);
    DETAIL("reset_side %d, relay error %s, peer got ECONNRESET", g.r.reset_side, strerror(g.r.error));
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_rst_b(void) { return reset_case(1, 0); }
static int case_rst_a(void) { return reset_case(0, 0); }
static int case_rst_b_idle(void) { return reset_case(1, 1); }

/* The receiver stops reading. The relay must end up asking only for the
 * receiver-side socket's writability, not for the sender's readability,
 * hold no more than the pipe, and not spin (the loop goes quiet). Then the
 * receiver reads again and everything arrives. When `eof_in_flight`, the
 * sender half-closes while bytes are stuck; the receiver then takes a few
 * KiB, which lets the relay read that EOF, and the FIN must still wait
 * behind the bytes the relay holds.
 * When `to_fallback`, the direction is switched to read()/write() while
 * its pipe holds bytes. */
static int backpressure(int dir, int eof_in_flight, int to_fallback)
{
    rig g;
    tk_peer *tx, *rx;
    fp_relay_dir *d;
    int ok = 0, rd, wr;
    size_t held;

    CHECK(rig_setup_small(&g, T_TCP, 64 * KiB, dir) == 0, "setup: %s", strerror(errno));
    g.split = 1;
    d = &g.r.dir[dir];
    tx = dir == 0 ? &g.pa : &g.pb;
    rx = dir == 0 ? &g.pb : &g.pa;
    rd = dir == 0 ? FP_READ_A : FP_READ_B;
    wr = dir == 0 ? FP_WRITE_B : FP_WRITE_A;
    rx->reading = 0;
    tx->send_total = eof_in_flight ? 48 * KiB : 16 * MiB;
    tx->shut_after_send = 1;
    CHECK(rig_run_quiet(&g, 300, 30), "never went quiet (%lu pumps)", g.pumps);
    CHECK(!g.viol[0], "invariant: %s", g.viol);
    CHECK(!g.result, "relay ended: 0x%x", g.result);
    CHECK(!(g.want & rd), "still asks to read src (want 0x%x, in_flight %zu, flags 0x%x)",
          g.want, d->in_flight, d->flags);
    CHECK(g.want & wr, "does not ask for dst writability (want 0x%x)", g.want);
    CHECK(d->flags & FP_DIR_DST_FULL, "DST_FULL not set (flags 0x%x)", d->flags);
    CHECK(d->in_flight > 0 && d->in_flight <= d->pipe_cap, "in_flight %zu, pipe_cap %zu",
          d->in_flight, d->pipe_cap);
    CHECK(d->pipe_cap == 64 * KiB, "pipe_cap %zu", d->pipe_cap);
    held = d->in_flight;
    DETAIL("stalled holding %zu/%zu bytes, flags 0x%x, want 0x%x", held, d->pipe_cap, d->flags, g.want);
    if (eof_in_flight) {
        rx->reading = 1;
        rx->read_until = 8 * KiB;
        CHECK(rig_run_quiet(&g, 300, 30), "never went quiet again");
        CHECK(!g.viol[0], "invariant: %s", g.viol);
        CHECK(!g.result, "relay ended: 0x%x", g.result);
        CHECK((d->flags & FP_DIR_EOF) && !(d->flags & FP_DIR_SHUT) && d->in_flight > 0,
              "want EOF read, dst not shut, bytes held; flags 0x%x in_flight %zu", d->flags, d->in_flight);
        CHECK(!(g.want & rd) && (g.want & wr), "want 0x%x", g.want);
        NOTE("; after 8 KiB read: EOF seen, %zu bytes still held, no FIN yet", d->in_flight);
        rx->read_until = 0;
    }
    if (to_fallback)
        d->flags |= FP_DIR_TEST_NOSPLICE;
    /* Unblock: the receiver reads, the other direction closes too. */
    rx->reading = 1;
    rx->shut_after_send = 1;
    CHECK(rig_run(&g, all_done, 60), "timeout after unblocking: result 0x%x rx %llu", g.result,
          (unsigned long long)rx->received);
    CHECK_DELIVERED(&g);
    if (to_fallback) {
        CHECK(d->flags & FP_DIR_FALLBACK, "did not fall back");
        CHECK(d->spliced > 0 && d->copied >= held && d->spliced + d->copied == tx->send_total,
              "spliced %llu + copied %llu != %llu", (unsigned long long)d->spliced,
              (unsigned long long)d->copied, (unsigned long long)tx->send_total);
        NOTE("; then spliced %llu + copied %llu", (unsigned long long)d->spliced,
             (unsigned long long)d->copied);
    }
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_backpressure_ab(void) { return backpressure(0, 0, 0); }
static int case_backpressure_ba(void) { return backpressure(1, 0, 0); }
static int case_eof_in_flight(void) { return backpressure(0, 1, 0); }
static int case_fallback_midstream(void) { return backpressure(0, 0, 1); }

/* Tiny segments fill a pipe's slots long before its bytes: 16 slots of a
 * 64 KiB pipe can hold 16 x 100 bytes. The relay then sees EAGAIN from a
 * splice into a pipe with in_flight far below pipe_cap; if it kept asking
 * for src readability the loop would spin (src readable, EAGAIN, again)
 * and never go quiet. */
static int small_segments(int type)
{
    rig g;
    fp_relay_dir *d;
    int ok = 0, rounds;

    CHECK(rig_setup_small(&g, type, 64 * KiB, 0) == 0, "setup: %s", strerror(errno));
    d = &g.r.dir[0];
    if (type == T_TCP)
        tk_set_nodelay(g.pa.fd);
    else
        tk_set_bufs(g.rb, 0, SMALL_BUF); /* unix: the sender's buffer bounds what is queued */
    g.pb.reading = 0;
    g.pa.piece = 100;
    g.pa.send_total = 400 * KiB;
    g.pa.shut_after_send = 1;
    /* A few rounds of "stall, let the receiver take a little": each round
     * must go quiet again, that is, must not spin. */
    for (rounds = 0; rounds < 4; rounds++) {
        CHECK(rig_run_quiet(&g, 300, 20), "round %d: never went quiet (%lu pumps): spinning?", rounds,
              g.pumps);
        CHECK(!g.viol[0], "invariant: %s", g.viol);
        CHECK(!g.result, "relay ended: 0x%x", g.result);
        CHECK(!(g.want & FP_READ_A), "round %d: asks to read A while stalled (in_flight %zu, flags 0x%x)",
              rounds, d->in_flight, d->flags);
        if (rounds == 0)
            DETAIL("stalled with %zu/%zu bytes in the pipe, flags 0x%x", d->in_flight, d->pipe_cap, d->flags);
        g.pb.reading = 1;
        g.pb.read_until = g.pb.received + 16 * KiB;
    }
    g.pb.read_until = 0;
    g.pb.shut_after_send = 1;
    CHECK(rig_run(&g, all_done, 60), "timeout: result 0x%x", g.result);
    CHECK_DELIVERED(&g);
    NOTE("; %lu pumps for %llu sends", g.pumps, (unsigned long long)(g.pa.send_total / 100));
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

/* Unix stream sockets keep one skb per send(), so this is the case that
 * really runs a pipe out of slots. TCP coalesces small segments in the
 * receive queue, so there it mostly checks that nothing spins. */
static int case_small_segments_unix(void) { return small_segments(T_UNIX); }
static int case_small_segments_tcp(void) { return small_segments(T_TCP); }

static int fallback_case(unsigned flag, size_t chunk)
{
    rig g;
    const uint64_t n = 8 * MiB;
    int ok = 0, i;

    CHECK(rig_setup(&g, T_TCP, chunk) == 0, "setup: %s", strerror(errno));
    g.r.dir[0].flags |= flag;
    g.r.dir[1].flags |= flag;
    two_way(&g, n, n + 1);
    CHECK(rig_run(&g, all_done, 60), "timeout: result 0x%x", g.result);
    CHECK_DELIVERED(&g);
    for (i = 0; i < 2; i++) {
        CHECK(g.r.dir[i].flags & FP_DIR_FALLBACK, "dir %d not in fallback", i);
        CHECK(!g.r.dir[i].spliced && g.r.dir[i].copied == n + (uint64_t)i, "dir %d spliced %llu copied %llu",
              i, (unsigned long long)g.r.dir[i].spliced, (unsigned long long)g.r.dir[i].copied);
    }
    if (flag == FP_DIR_FALLBACK)
        CHECK(!g.max_cap[0] && !g.max_cap[1], "a pipe was created in preset fallback");
    DETAIL("8 MiB each way copied, chunk %zu, max buffered %zu/%zu", chunk,
           g.max_in_flight[0], g.max_in_flight[1]);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_fallback_einval(void) { return fallback_case(FP_DIR_TEST_NOSPLICE, 64 * KiB); }
static int case_fallback_preset(void) { return fallback_case(FP_DIR_FALLBACK, 4096); }

static int case_small_chunk(void)
{
    rig g;
    const uint64_t n = 8 * MiB;
    int ok = 0;

    CHECK(rig_setup(&g, T_TCP, 100) == 0, "setup: %s", strerror(errno)); /* clamped to 4096 */
    CHECK(g.r.chunk == 4096, "chunk not clamped: %zu", g.r.chunk);
    g.split = 1;
    g.spurious = 1;
    two_way(&g, n + 3, n);
    CHECK(rig_run(&g, all_done, 60), "timeout: result 0x%x", g.result);
    CHECK_DELIVERED(&g);
    CHECK(g.max_cap[0] == 4096 && g.max_cap[1] == 4096, "pipe_cap %zu/%zu", g.max_cap[0], g.max_cap[1]);
    CHECK(g.max_in_flight[0] <= 4096 && g.max_in_flight[1] <= 4096, "in_flight above 4096");
    DETAIL("4 KiB pipes, spurious events, %lu pumps", g.pumps);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_counters(void)
{
    rig g;
    fp_counter up_rx = 0, total = 1000, tcp_rx = 7, tcp_tx = 0;
    const uint64_t ab = 3 * MiB + 1, ba = 5 * MiB + 2;
    int ok = 0;

    CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
    CHECK(!g.r.dir[0].ctr[2] && !g.r.dir[1].ctr[2], "init left a series counter set");
    /* dir 0 has only the shared slot (ctr[0] NULL); dir 1 has its own too;
     * the third pointer (the TCP series) in both. */
    g.r.dir[0].ctr[1] = &total;
    g.r.dir[0].ctr[2] = &tcp_rx;
    g.r.dir[1].ctr[0] = &up_rx;
    g.r.dir[1].ctr[1] = &total;
    g.r.dir[1].ctr[2] = &tcp_tx;
    two_way(&g, ab, ba);
    CHECK(rig_run(&g, all_done, 60), "timeout: result 0x%x", g.result);
    CHECK_DELIVERED(&g);
    CHECK(up_rx == ba, "up_rx %llu != %llu", (unsigned long long)up_rx, (unsigned long long)ba);
    CHECK(total == 1000 + ab + ba, "total %llu != %llu", (unsigned long long)total,
          (unsigned long long)(1000 + ab + ba));
    CHECK(tcp_rx == 7 + ab && tcp_tx == ba, "series %llu %llu", (unsigned long long)tcp_rx,
          (unsigned long long)tcp_tx);
    CHECK(g.r.dir[0].spliced + g.r.dir[0].copied == ab && g.r.dir[1].spliced + g.r.dir[1].copied == ba,
          "spliced+copied do not add up");
    DETAIL("shared slot +%llu, dir slot +%llu", (unsigned long long)(ab + ba), (unsigned long long)ba);
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_free_twice(void)
{
    rig g;
    fp_relay z;
    int ok = 0, fds0, fd0_ok;

    fds0 = tk_count_fds();
    CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
    CHECK(g.r.dir[0].pipe_r == -1 && g.r.dir[1].pipe_w == -1 && !g.r.dir[0].buf && g.r.reset_side == -1,
          "init state");
    CHECK(tk_count_fds() == fds0 + 4, "init opened fds");
    /* Leave it mid-stream, with both pipes open and bytes in them. */
    g.pb.reading = 0;
    g.pa.reading = 0;
    g.pa.send_total = g.pb.send_total = 4 * MiB;
    CHECK(rig_run_quiet(&g, 200, 20), "never went quiet");
    CHECK(g.r.dir[0].pipe_cap && g.r.dir[1].pipe_cap, "pipes not open");
    CHECK(tk_count_fds() == fds0 + 8, "expected 4 sockets + 2 pipes, have %d fds", tk_count_fds() - fds0);
    fp_relay_free(&g.r);
    CHECK(tk_count_fds() == fds0 + 4, "free left %d fds", tk_count_fds() - fds0);
    fp_relay_free(&g.r);
    g.live = 0;
    CHECK(tk_count_fds() == fds0 + 4, "second free changed fds");
    /* A zero-filled relay that init never saw must not close fd 0. */
    fd0_ok = fcntl(0, F_GETFD) >= 0;
    memset(&z, 0, sizeof(z));
    fp_relay_free(&z);
    fp_relay_free(&z);
    CHECK(!fd0_ok || fcntl(0, F_GETFD) >= 0, "freeing a zeroed relay closed fd 0");
    DETAIL("pipes closed once, zeroed struct harmless");
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

/* Not root or root: F_SETPIPE_SZ beyond pipe-max-size is refused (EPERM)
 * without CAP_SYS_RESOURCE, so do it in a child that dropped privileges.
 * The relay must keep the default pipe and size its reads by it. */
static int case_pipe_size_refused(void)
{
    pid_t pid;
    int st = 0, ok = 0;

    fflush(stdout);
    pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        rig g;
        int p[2], def, code = 0;

        if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
            _exit(3);
        if (pipe(p) < 0)
            _exit(4);
        def = fcntl(p[0], F_GETPIPE_SZ);
        close(p[0]);
        close(p[1]);
        if (rig_setup(&g, T_TCP, 16 * MiB) < 0)
            _exit(5);
        two_way(&g, 4 * MiB, 0);
        if (!rig_run(&g, all_done, 30) || g.result != FP_RELAY_DONE || g.pb.received != 4 * MiB ||
            g.pb.mismatch || g.viol[0])
            code = 6;
        else if (g.max_cap[0] != (size_t)def || g.max_cap[0] >= 16 * MiB)
            code = 7;
        rig_teardown(&g);
        _exit(code);
    }
    CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d (3 setuid, 6 transfer, 7 pipe_cap)",
          WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    DETAIL("F_SETPIPE_SZ(16 MiB) refused, default pipe kept, bytes exact");
    ok = 1;
out:
    return ok;
}

/* FP_DRAIN (edge-triggered callers): 1000 bytes and a RST are both queued
 * at A before one pump. Without FP_DRAIN the short read ends the pump (a
 * level-triggered loop reports A again); with it the same single pump reads
 * on into the reset. */
static int drain_case(int drain)
{
    rig g;
    int ok = 0, res;

    CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
    g.pa.send_total = 1000;
    tk_peer_send(&g.pa);
    CHECK(g.pa.sent == 1000, "sent %llu", (unsigned long long)g.pa.sent);
    CHECK(tk_wait_acked(g.pa.fd, 2000) == 0, "not acknowledged");
    tk_sock_abort(g.pa.fd);
    g.pa.fd = -1;
    res = fp_relay_pump(&g.r, FP_READ_A | (drain ? FP_DRAIN : 0));
    g.pumps++;
    if (drain) {
        CHECK(res == FP_RELAY_RESET, "result 0x%x", res);
        CHECK(g.r.reset_side == 0 && g.r.error == ECONNRESET, "side %d error %s", g.r.reset_side,
              strerror(g.r.error));
        CHECK(g.r.dir[0].spliced == 1000, "delivered %llu before the reset", (unsigned long long)g.r.dir[0].spliced);
        rig_finish(&g, res);
        DETAIL("one pump: 1000 bytes delivered, then RESET (side 0)");
    } else {
        CHECK(!(res & (FP_RELAY_RESET | FP_RELAY_DONE)) && (res & FP_READ_A), "result 0x%x", res);
        CHECK(g.r.dir[0].spliced == 1000 && !(g.r.dir[0].flags & FP_DIR_MORE), "spliced %llu flags 0x%x",
              (unsigned long long)g.r.dir[0].spliced, g.r.dir[0].flags);
        /* The level-triggered loop reports A again; that pump sees the reset. */
        res = fp_relay_pump(&g.r, FP_READ_A);
        CHECK(res == FP_RELAY_RESET, "second pump 0x%x", res);
        rig_finish(&g, res);
        DETAIL("short read ends the pump, next pump sees the reset");
    }
    ok = 1;
out:
    rig_teardown(&g);
    return ok;
}

static int case_drain_off(void) { return drain_case(0); }
static int case_drain_on(void) { return drain_case(1); }

/* A pipe pool without the engine: the relays take pipes from it, give
 * empty ones back (also when a direction goes idle), and the last FIN is
 * left to close() (fin_by_close). */
static int case_pool(void)
{
    fp_pipe_pool pool;
    rig g;
    int ok = 0, round, live = 0, fds0 = tk_count_fds();

    memset(&g, 0, sizeof(g));
    g.ra = g.rb = g.pa.fd = g.pb.fd = -1;
    CHECK(fp_pipe_pool_init(&pool, 64 * KiB, 2) == 0, "pool init");
    live = 1;
    for (round = 0; round < 3; round++) {
        CHECK(rig_setup(&g, T_TCP, 64 * KiB) == 0, "setup: %s", strerror(errno));
        g.r.pool = &pool;
        g.r.fin_by_close = 1;
        two_way(&g, 300 * KiB + (uint64_t)round, 100 * KiB);
        CHECK(rig_run(&g, all_done, 20), "round %d: timeout, result 0x%x", round, g.result);
        CHECK_DELIVERED(&g);
        rig_teardown(&g);
        CHECK(pool.n <= pool.max, "pool holds %u > %u", pool.n, pool.max);
    }
    CHECK(pool.created <= 2 && pool.reused >= 4 && pool.closed == 0 && pool.n == pool.created,
          "created %llu reused %llu closed %llu pooled %u", (unsigned long long)pool.created,
          (unsigned long long)pool.reused, (unsigned long long)pool.closed, pool.n);
    DETAIL("3 relays: %llu pipes made, %llu reuses, %u pooled; FIN by close()",
           (unsigned long long)pool.created, (unsigned long long)pool.reused, pool.n);
    fp_pipe_pool_destroy(&pool);
    fp_pipe_pool_destroy(&pool);
    live = 0;
    CHECK(tk_count_fds() == fds0, "fds %d -> %d", fds0, tk_count_fds());
    ok = 1;
out:
    rig_teardown(&g);
    if (live)
        fp_pipe_pool_destroy(&pool);
    return ok;
}

static const tk_timed_case cases[] = {
    { "tcp bulk 64 MiB both ways at once, counters", case_bulk_tcp },
    { "unix socketpair bulk 16 MiB both ways", case_bulk_unix },
    { "half-close A->B, then B answers", case_half_close_ab },
    { "half-close B->A, then A answers", case_half_close_ba },
    { "both half-close with no data", case_both_close_empty },
    { "RST from B mid-transfer", case_rst_b },
    { "RST from A mid-transfer", case_rst_a },
    { "RST from B while idle", case_rst_b_idle },
    { "backpressure A->B: B stops reading", case_backpressure_ab },
    { "backpressure B->A: A stops reading", case_backpressure_ba },
    { "EOF while bytes stuck: FIN waits for them", case_eof_in_flight },
    { "100-byte sends, stalled receiver, unix: no spin", case_small_segments_unix },
    { "100-byte sends, stalled receiver, tcp: no spin", case_small_segments_tcp },
    { "fallback: splice EINVAL from the start", case_fallback_einval },
    { "fallback: preset FP_DIR_FALLBACK, 4 KiB buffer", case_fallback_preset },
    { "fallback: switch with bytes in the pipe", case_fallback_midstream },
    { "small chunk 4096 + spurious events", case_small_chunk },
    { "counters add up (shared and NULL slots)", case_counters },
    { "fp_relay_free twice, zeroed struct", case_free_twice },
    { "pipe size refused keeps the default", case_pipe_size_refused },
    { "no FP_DRAIN: a short read ends the pump", case_drain_off },
    { "FP_DRAIN: one pump reads data, then the RST", case_drain_on },
    { "pipe pool + fin_by_close without the engine", case_pool },
};

/* ---- benchmark ---------------------------------------------------------- */

static unsigned char bench_buf_tx[1 << 20];

typedef struct bench_res {
    double gibps;
    double relay_cpu;       /* relay thread CPU seconds */
    double tx_cpu, rx_cpu;  /* sender and receiver thread CPU seconds */
    unsigned long pumps, waits, ctls;
    int ok;
} bench_res;

static bench_res bench_direct(uint64_t bytes)
{
    bench_res res = { 0 };
    tk_xfer tx = { 0 }, rx = { 0 };
    pthread_t t1, t2;
    int c, s;
    double t0;

    if (tk_tcp_pair(&c, &s, NULL) < 0)
        return res;
    tk_set_nonblock(c, 0);
    tk_set_nonblock(s, 0);
    tx = (tk_xfer){ .fd = c, .buf = bench_buf_tx, .len = sizeof(bench_buf_tx), .bytes = bytes };
    rx.fd = s;
    t0 = tk_now();
    pthread_create(&t2, NULL, tk_xfer_recv, &rx);
    pthread_create(&t1, NULL, tk_xfer_send, &tx);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    close(c);
    close(s);
    res.ok = rx.done == bytes && !tx.err && !rx.err;
    res.gibps = (double)bytes / (double)(1 << 30) / (rx.t_end - t0);
    res.tx_cpu = tx.cpu;
    res.rx_cpu = rx.cpu;
    return res;
}

static uint32_t ep_bits(int want, int rbit, int wbit)
{
    return (uint32_t)(((want & rbit) ? EPOLLIN : 0) | ((want & wbit) ? EPOLLOUT : 0));
}

/* Brings fd's epoll registration to `bits`, as libuv does: an fd with no
 * interest left is removed, since epoll reports EPOLLHUP even for an empty
 * event mask, and a half-closed socket would spin the loop. */
static void ep_set(int ep, int fd, uint32_t side, uint32_t *cur, uint32_t bits, unsigned long *ctls)
{
    struct epoll_event ev;

    if (bits == *cur)
        return;
    ev.events = bits;
    ev.data.u32 = side;
    if (!bits)
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, &ev);
    else
        epoll_ctl(ep, *cur ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    *cur = bits;
    (*ctls)++;
}

/* The relay in this thread on a level-triggered epoll, peers in threads. */
static bench_res bench_relay(uint64_t bytes, size_t chunk, unsigned flags)
{
    bench_res res = { 0 };
    tk_xfer tx = { 0 }, rx = { 0 };
    pthread_t t1, t2;
    fp_relay r;
    struct epoll_event evs[4];
    int pa, ra, rb, pb, ep, want, rc = 0, k;
    uint32_t cur_a = 0, cur_b = 0;
    double t0, cpu0;

    if (tk_tcp_pair(&pa, &ra, NULL) < 0 || tk_tcp_pair(&rb, &pb, NULL) < 0)
        return res;
    tk_set_nonblock(pa, 0);
    tk_set_nonblock(pb, 0);
    shutdown(pb, SHUT_WR); /* one-way transfer: B -> A is empty */
    ep = epoll_create1(EPOLL_CLOEXEC);
    fp_relay_init(&r, ra, rb, chunk);
    r.dir[0].flags |= flags;
    r.dir[1].flags |= flags;
    want = fp_relay_start(&r);
    tx = (tk_xfer){ .fd = pa, .buf = bench_buf_tx, .len = sizeof(bench_buf_tx), .bytes = bytes };
    rx.fd = pb;
    t0 = tk_now();
    cpu0 = tk_thread_cpu();
    pthread_create(&t2, NULL, tk_xfer_recv, &rx);
    pthread_create(&t1, NULL, tk_xfer_send, &tx);
    while (!(rc & (FP_RELAY_DONE | FP_RELAY_RESET))) {
        int n;

        /* Like libuv: one epoll_ctl per fd whose interest changed. */
        ep_set(ep, ra, 0, &cur_a, ep_bits(want, FP_READ_A, FP_WRITE_A), &res.ctls);
        ep_set(ep, rb, 1, &cur_b, ep_bits(want, FP_READ_B, FP_WRITE_B), &res.ctls);
        n = epoll_wait(ep, evs, 4, 10000);
        res.waits++;
        if (n <= 0)
            break;
        for (k = 0; k < n && !(rc & (FP_RELAY_DONE | FP_RELAY_RESET)); k++) {
            uint32_t e = evs[k].events;
            int side = (int)evs[k].data.u32, bits = 0;
            int rbit = side ? FP_READ_B : FP_READ_A, wbit = side ? FP_WRITE_B : FP_WRITE_A;

            if (e & (EPOLLERR | EPOLLHUP))
                bits = rbit | wbit;
            if (e & EPOLLIN)
                bits |= rbit;
            if (e & EPOLLOUT)
                bits |= wbit;
            bits &= want;
            if (!bits)
                continue;
            rc = fp_relay_pump(&r, bits);
            res.pumps++;
            if (!(rc & (FP_RELAY_DONE | FP_RELAY_RESET)))
                want = rc;
        }
    }
    res.relay_cpu = tk_thread_cpu() - cpu0;
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    fp_relay_free(&r);
    close(ep);
    close(pa);
    close(ra);
    close(rb);
    close(pb);
    res.ok = rc == FP_RELAY_DONE && rx.done == bytes && !tx.err && !rx.err;
    res.gibps = (double)bytes / (double)(1 << 30) / (rx.t_end - t0);
    res.tx_cpu = tx.cpu;
    res.rx_cpu = rx.cpu;
    return res;
}

/* Reference, not the product: the simplest possible splice proxy (blocking
 * sockets, one thread, splice in then out until EOF, no event loop). It
 * separates what the pump's event-driven design costs from what a second
 * loopback TCP hop through a pipe costs on this machine anyway. */
static bench_res bench_ref_splice(uint64_t bytes, size_t chunk)
{
    bench_res res = { 0 };
    tk_xfer tx = { 0 }, rx = { 0 };
    pthread_t t1, t2;
    int pa, ra, rb, pb, p[2], bad = 0;
    double t0, cpu0;

    if (tk_tcp_pair(&pa, &ra, NULL) < 0 || tk_tcp_pair(&rb, &pb, NULL) < 0 || pipe2(p, O_CLOEXEC) < 0)
        return res;
    fcntl(p[1], F_SETPIPE_SZ, (int)chunk);
    tk_set_nonblock(pa, 0);
    tk_set_nonblock(ra, 0);
    tk_set_nonblock(rb, 0);
    tk_set_nonblock(pb, 0);
    tx = (tk_xfer){ .fd = pa, .buf = bench_buf_tx, .len = sizeof(bench_buf_tx), .bytes = bytes };
    rx.fd = pb;
    t0 = tk_now();
    cpu0 = tk_thread_cpu();
    pthread_create(&t2, NULL, tk_xfer_recv, &rx);
    pthread_create(&t1, NULL, tk_xfer_send, &tx);
    for (;;) {
        ssize_t n = splice(ra, NULL, p[1], NULL, chunk, SPLICE_F_MOVE), m;

        if (n <= 0) {
            bad = n < 0;
            break;
        }
        while (n > 0 && (m = splice(p[0], NULL, rb, NULL, (size_t)n, SPLICE_F_MOVE)) > 0)
            n -= m;
        if (n > 0) {
            bad = 1;
            break;
        }
        res.pumps++;
    }
    shutdown(rb, SHUT_WR);
    res.relay_cpu = tk_thread_cpu() - cpu0;
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    close(p[0]);
    close(p[1]);
    close(pa);
    close(ra);
    close(rb);
    close(pb);
    res.ok = !bad && rx.done == bytes && !tx.err && !rx.err;
    res.gibps = (double)bytes / (double)(1 << 30) / (rx.t_end - t0);
    res.tx_cpu = tx.cpu;
    res.rx_cpu = rx.cpu;
    return res;
}

#define BENCH_MAX_ROUNDS 15

typedef struct bench_conf {
    const char *name;
    size_t chunk;           /* 0: direct connection, no relay */
    unsigned flags;         /* preset on both directions; BENCH_REF: bench_ref_splice() */
} bench_conf;

#define BENCH_REF 0x80000000u

static const bench_conf confs[] = {
    { "direct", 0, 0 },
    { "relay 64K", 64 * 1024, 0 },
    { "relay 256K", 256 * 1024, 0 },
    { "relay 1M", 1024 * 1024, 0 },
    { "copy 256K", 256 * 1024, FP_DIR_FALLBACK }, /* the read()/write() path, for reference */
    { "ref 256K", 256 * 1024, BENCH_REF },        /* blocking splice loop, for reference */
};
#define NCONF (sizeof(confs) / sizeof(confs[0]))

/* Each round runs direct, every relay config, then direct again; a relay's
 * ratio is against the mean of its round's two direct runs, so that load
 * from other tenants of a shared machine hits both sides of the ratio. */
static int bench(int argc, char **argv)
{
    double g[NCONF][BENCH_MAX_ROUNDS], ratio[NCONF][BENCH_MAX_ROUNDS];
    double cpu[NCONF] = { 0 }, txc[NCONF] = { 0 }, rxc[NCONF] = { 0 };
    unsigned long pumps[NCONF] = { 0 }, waits[NCONF] = { 0 }, ctls[NCONF] = { 0 };
    uint64_t mib = argc > 2 ? strtoull(argv[2], NULL, 10) : 1024;
    int rounds = argc > 3 ? atoi(argv[3]) : 3, i;
    size_t c;
    uint64_t bytes;

    if (rounds < 1 || rounds > BENCH_MAX_ROUNDS || mib < 1) {
        fprintf(stderr, "usage: %s --bench [MiB] [rounds 1..%d]\n", argv[0], BENCH_MAX_ROUNDS);
        return 2;
    }
    bytes = mib * MiB;
    memset(bench_buf_tx, 'x', sizeof(bench_buf_tx));
    printf("bench: %llu MiB one way over 127.0.0.1 TCP, %d rounds, %ld CPUs online\n",
           (unsigned long long)mib, rounds, sysconf(_SC_NPROCESSORS_ONLN));
    for (i = 0; i < rounds; i++) {
        bench_res res[NCONF], d2;
        double base;

        for (c = 0; c < NCONF; c++) {
            if (!confs[c].chunk)
                res[c] = bench_direct(bytes);
            else if (confs[c].flags & BENCH_REF)
                res[c] = bench_ref_splice(bytes, confs[c].chunk);
            else
                res[c] = bench_relay(bytes, confs[c].chunk, confs[c].flags);
            if (!res[c].ok) {
                printf("%s: transfer failed\n", confs[c].name);
                return 1;
            }
        }
        d2 = bench_direct(bytes);
        if (!d2.ok) {
            printf("direct: transfer failed\n");
            return 1;
        }
        base = (res[0].gibps + d2.gibps) / 2;
        printf("round %d: direct %.2f/%.2f GiB/s", i + 1, res[0].gibps, d2.gibps);
        for (c = 0; c < NCONF; c++) {
            g[c][i] = c ? res[c].gibps : base;
            ratio[c][i] = g[c][i] / base;
            cpu[c] += res[c].relay_cpu;
            txc[c] += res[c].tx_cpu + (c ? 0 : d2.tx_cpu);
            rxc[c] += res[c].rx_cpu + (c ? 0 : d2.rx_cpu);
            pumps[c] += res[c].pumps;
            waits[c] += res[c].waits;
            ctls[c] += res[c].ctls;
            if (c)
                printf(" | %s %.2f (x%.2f)", confs[c].name, g[c][i], ratio[c][i]);
        }
        printf("\n");
        fflush(stdout);
    }
    printf("\nGiB/s; ratio = relay / mean of the round's two direct runs (median over rounds);\n"
           "CPU = thread CPU seconds per GiB moved (tx: sender, rx: receiver, relay: pump thread)\n");
    printf("%-11s %7s %6s %6s %9s %7s %7s %7s %9s %9s %8s\n", "config", "median", "min", "max",
           "ratio_med", "tx_cpu", "rx_cpu", "relay", "pumps/GiB", "waits/GiB", "ctls/GiB");
    for (c = 0; c < NCONF; c++) {
        double s[BENCH_MAX_ROUNDS], q[BENCH_MAX_ROUNDS];
        double gib = (double)bytes * rounds / (double)(1 << 30) * (c ? 1 : 2);

        memcpy(s, g[c], sizeof(double) * (size_t)rounds);
        memcpy(q, ratio[c], sizeof(double) * (size_t)rounds);
        qsort(s, (size_t)rounds, sizeof(double), tk_cmp_double);
        qsort(q, (size_t)rounds, sizeof(double), tk_cmp_double);
        printf("%-11s %7.2f %6.2f %6.2f %9.2f %7.3f %7.3f", confs[c].name, s[rounds / 2], s[0],
               s[rounds - 1], q[rounds / 2], txc[c] / gib, rxc[c] / gib);
        if (!confs[c].chunk)
            printf("\n");
        else
            printf(" %7.3f %9.0f %9.0f %8.0f\n", cpu[c] / gib, (double)pumps[c] / gib,
                   (double)waits[c] / gib, (double)ctls[c] / gib);
    }
    return 0;
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
    /* splice() into a socket whose peer is gone raises SIGPIPE; the relay's
     * contract says the process ignores it (CPython does). */
    signal(SIGPIPE, SIG_IGN);
    if (argc > 1 && !strcmp(argv[1], "--bench"))
        return bench(argc, argv);
    tk_pat_init();
    return tk_run_timed(cases, TK_NELEM(cases), 48, NULL);
}
