/* testkit.h - the harness shared by the C tests in tests/c/.
 *
 * One header, no library: everything here is `static inline` (or a static
 * object marked unused), so a test that does not use a piece pays nothing
 * for it and -Wall -Wextra -Werror stays quiet. Plain C99 (gnu99), glibc,
 * Linux.
 *
 * INCLUDE IT FIRST, before any system or project header: it defines
 * _GNU_SOURCE (accept4, RUSAGE_THREAD, ...), which only works before the
 * first system header.
 *
 * What is in it, top to bottom:
 *   units, clocks          KiB, MiB, TK_NELEM, tk_now, tk_now_ns,
 *                          tk_sleep_ms, tk_thread_cpu, tk_cmp_double
 *   checks                 CHECK / CHECK_EQ / CHECK_STR (a failed check
 *                          returns 1 from the case), or, with
 *                          TESTKIT_GOTO_CHECKS defined before the include,
 *                          CHECK(cond, fmt, ...) that records the reason in
 *                          tk_why and jumps to the case's `out:` label;
 *                          DETAIL / NOTE, tk_keep_first
 *   case runners           tk_report / tk_run_cases / tk_finish ("<name> ok"
 *                          lines, then "N passed, M failed"); tk_run_timed
 *                          (timed lines with a detail, fd-leak check)
 *   guard arenas           tk_guard_*: buffers that end at a PROT_NONE page
 *   file descriptors       tk_count_fds
 *   sockets                tk_tcp_pair, tk_unix_pair, tk_listener,
 *                          tk_sock_abort, tk_wait_acked, tk_set_*
 *   byte pattern           tk_pat_init, tk_pat_span, tk_pat_ok
 *   scripted peers         tk_peer_*: a non-blocking socket that streams the
 *                          pattern and checks what it receives
 *   bulk threads           tk_xfer_send / tk_xfer_recv (pthread bodies)
 *   http1 second copy      with TESTKIT_HTTP1_ALT defined before the
 *                          include: csrc/http1.c compiled a second time with
 *                          its names prefixed alt_ (the other scanner)
 */
#ifndef FASTPROXY_TESTKIT_H
#define FASTPROXY_TESTKIT_H

#if defined(_FEATURES_H) && !defined(__USE_GNU)
#error "testkit.h must be included before any other header (it needs _GNU_SOURCE)"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define TK_UNUSED __attribute__((unused))

/* ---- units, clocks ---------------------------------------------------------- */

#define KiB ((uint64_t)1 << 10)
#define MiB ((uint64_t)1 << 20)

/* Entries of an array (not a pointer). */
#define TK_NELEM(a) (sizeof(a) / sizeof((a)[0]))

/* CLOCK_MONOTONIC in seconds: deadlines are `tk_now() + seconds`. */
static inline double tk_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* CLOCK_MONOTONIC in nanoseconds (as a double, for per-iteration averages). */
static inline double tk_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static inline void tk_sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

    nanosleep(&ts, NULL);
}

/* CPU seconds (user + system) the calling thread used so far. */
static inline double tk_thread_cpu(void)
{
    struct rusage ru;

    getrusage(RUSAGE_THREAD, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           (double)ru.ru_stime.tv_usec * 1e-6;
}

/* qsort comparator for doubles, ascending. */
static inline int tk_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

/* ---- checks ------------------------------------------------------------------
 *
 * Default style: a case is `static int f(...)` that returns 0 when it
 * passed; a failed check prints "  file:line: ..." to stderr and returns 1.
 *
 * TESTKIT_GOTO_CHECKS style: a case sets `ok = 1` at its end and has an
 * `out:` label that cleans up and returns ok; a failed CHECK(cond, fmt, ...)
 * formats the reason into tk_why (printed by tk_run_timed) and jumps there.
 * DETAIL(fmt, ...) sets tk_detail, printed after a case that passed;
 * NOTE(fmt, ...) appends to it.
 */

#define TK_MSG_LEN 320
static char tk_why[TK_MSG_LEN] TK_UNUSED;
static char tk_detail[TK_MSG_LEN] TK_UNUSED;

#define DETAIL(...) snprintf(tk_detail, sizeof(tk_detail), __VA_ARGS__)
#define NOTE(...) \
    snprintf(tk_detail + strlen(tk_detail), sizeof(tk_detail) - strlen(tk_detail), __VA_ARGS__)

#ifdef TESTKIT_GOTO_CHECKS

#define CHECK(cond, ...)                                     \
    do {                                                     \
        if (!(cond)) {                                       \
            snprintf(tk_why, sizeof(tk_why), __VA_ARGS__);   \
            goto out;                                        \
        }                                                    \
    } while (0)

#else

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "  %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            return 1;                                                                \
        }                                                                            \
    } while (0)

/* Compares as long long; prints both expressions and values on a mismatch. */
#define CHECK_EQ(a, b)                                                               \
    do {                                                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);                          \
        if (a_ != b_) {                                                              \
            fprintf(stderr, "  %s:%d: %s == %lld, expected %s == %lld\n",            \
                    __FILE__, __LINE__, #a, a_, #b, b_);                             \
            return 1;                                                                \
        }                                                                            \
    } while (0)

/* Two NUL-terminated strings, equal. */
#define CHECK_STR(got, want)                                                         \
    do {                                                                             \
        if (strcmp((got), (want)) != 0) {                                            \
            fprintf(stderr, "  %s:%d: got \"%s\", expected \"%s\"\n", __FILE__,      \
                    __LINE__, (got), (want));                                        \
            return 1;                                                                \
        }                                                                            \
    } while (0)

#endif /* TESTKIT_GOTO_CHECKS */

/* Formats into buf only if buf is still empty: the first message wins. */
static inline void tk_keep_first(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void tk_keep_first(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;

    if (buf[0])
        return;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

/* ---- file descriptors ------------------------------------------------------------ */

/* Open fds of this process (entries of /proc/self/fd, minus the one the
 * count itself opens), or -1 when /proc is not there. */
static inline int tk_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;

    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

/* ---- case runners --------------------------------------------------------------
 *
 * Untimed (default check style): every case prints one line,
 * "[prefix] <name> ok" or "[prefix] <name> FAIL" ("<name> ok" with a NULL
 * prefix), stdout flushed so that it interleaves with the checks' stderr.
 * tk_finish() prints the last line, "N passed, M failed", and returns the
 * exit status: 1 if any case failed, else 0.
 */

static int tk_passed TK_UNUSED, tk_failed TK_UNUSED;

/* A case of the untimed runner: returns 0 when it passed. */
typedef struct tk_case {
    const char *name;
    int (*fn)(void);
} tk_case;

static inline void tk_report(const char *prefix, const char *name, int failed)
{
    if (prefix)
        printf("[%s] ", prefix);
    printf("%s %s\n", name, failed ? "FAIL" : "ok");
    fflush(stdout);
    if (failed)
        tk_failed++;
    else
        tk_passed++;
}

static inline void tk_run_cases(const tk_case *cases, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        tk_report(NULL, cases[i].name, cases[i].fn());
}

static inline int tk_finish(void)
{
    printf("%d passed, %d failed\n", tk_passed, tk_failed);
    return tk_failed ? 1 : 0;
}

/* A case of the timed runner (TESTKIT_GOTO_CHECKS style): returns nonzero
 * when it passed. */
typedef struct tk_timed_case {
    const char *name;
    int (*fn)(void);
} tk_timed_case;

/* Runs the cases whose name contains `filter` (all of them when NULL), each
 * line "<name padded to width> ok    <seconds>s  <tk_detail>" or
 * "... FAIL  <seconds>s  <tk_why>". A case that passed but left more fds
 * open than it found fails ("fd leak"). Then one more case, "no fd leaked
 * overall" (fds at the start vs at the end), and "N passed, M failed".
 * Returns the exit status: 1 if any case failed, else 0. */
static inline int tk_run_timed(const tk_timed_case *cases, size_t n, int width, const char *filter)
{
    size_t i;
    int passed = 0, failed = 0, fds_start = tk_count_fds(), fds_end;

    for (i = 0; i < n; i++) {
        int before, ok, after;
        double t0 = tk_now();

        if (filter && !strstr(cases[i].name, filter))
            continue;
        before = tk_count_fds();
        tk_detail[0] = tk_why[0] = 0;
        ok = cases[i].fn();
        after = tk_count_fds();
        if (ok && after != before) {
            ok = 0;
            snprintf(tk_why, sizeof(tk_why), "fd leak: %d fds before, %d after", before, after);
        }
        if (ok) {
            passed++;
            printf("%-*s ok    %.2fs  %s\n", width, cases[i].name, tk_now() - t0, tk_detail);
        } else {
            failed++;
            printf("%-*s FAIL  %.2fs  %s\n", width, cases[i].name, tk_now() - t0, tk_why);
        }
        fflush(stdout);
    }
    fds_end = tk_count_fds();
    if (fds_end != fds_start) {
        printf("%-*s FAIL  %d fds at start, %d at end\n", width, "no fd leaked overall", fds_start,
               fds_end);
        failed++;
    } else {
        printf("%-*s ok\n", width, "no fd leaked overall");
        passed++;
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

/* ---- guard arenas ------------------------------------------------------------------
 *
 * `size` usable bytes (rounded up to whole pages) followed by one PROT_NONE
 * page. A buffer of n bytes taken with tk_guard_at() ends exactly where the
 * guard page begins, so reading or writing one byte past it faults, with or
 * without the sanitizers.
 */

typedef struct tk_guard {
    char *base;
    size_t size;            /* usable bytes; base + size is the guard page */
} tk_guard;

/* 0, or -1 (errno set) when the mapping or the mprotect failed. */
static inline int tk_guard_map(tk_guard *g, size_t size)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *base;

    size = (size + page - 1) / page * page;
    base = mmap(NULL, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED)
        return -1;
    if (mprotect(base + size, page, PROT_NONE) != 0) {
        munmap(base, size + page);
        return -1;
    }
    g->base = base;
    g->size = size;
    return 0;
}

/* tk_guard_map, or exits with status 2 ("mmap/mprotect: ..."). */
static inline void tk_guard_init(tk_guard *g, size_t size)
{
    if (tk_guard_map(g, size) != 0) {
        perror("mmap/mprotect");
        exit(2);
    }
}

static inline void tk_guard_unmap(tk_guard *g)
{
    munmap(g->base, g->size + (size_t)sysconf(_SC_PAGESIZE));
    g->base = NULL;
}

/* The n bytes that end where the guard page begins; exits with status 2 if
 * n is larger than the arena. */
static inline char *tk_guard_at(tk_guard *g, size_t n)
{
    if (n > g->size) {
        fprintf(stderr, "input too large for the arena\n");
        exit(2);
    }
    return g->base + g->size - n;
}

/* Copies src[0..n) to tk_guard_at(g, n) (src may overlap the arena). */
static inline const char *tk_guard_place(tk_guard *g, const void *src, size_t n)
{
    char *dst = tk_guard_at(g, n);

    memmove(dst, src, n);
    return dst;
}

/* The first byte of the guard page: reading it must fault. */
static inline const char *tk_guard_end(const tk_guard *g)
{
    return g->base + g->size;
}

/* ---- sockets ------------------------------------------------------------------------ */

/* O_NONBLOCK on (on != 0) or off; -1 if fcntl failed. */
static inline int tk_set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);

    if (fl < 0)
        return -1;
    return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* SO_RCVBUF / SO_SNDBUF; 0 leaves that one at the default. */
static inline void tk_set_bufs(int fd, int rcv, int snd)
{
    if (rcv)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    if (snd)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &snd, sizeof(snd));
}

/* Blocking I/O on fd gives up after `seconds` (EAGAIN): a thread blocked on a
 * relay that hangs ends instead of hanging the test. */
static inline void tk_set_timeouts(int fd, int seconds)
{
    struct timeval tv = { seconds, 0 };

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static inline void tk_set_nodelay(int fd)
{
    int one = 1;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* A blocking TCP listener on 127.0.0.1, port 0; *sa gets its address. The
 * buffer sizes (0 = default) are inherited by accepted sockets. -1 on error. */
static inline int tk_listener(struct sockaddr_in *sa, int backlog, int rcv, int snd)
{
    socklen_t len = sizeof(*sa);
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (l < 0)
        return -1;
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    tk_set_bufs(l, rcv, snd);
    if (bind(l, (struct sockaddr *)sa, sizeof(*sa)) < 0 || listen(l, backlog) < 0 ||
        getsockname(l, (struct sockaddr *)sa, &len) < 0) {
        close(l);
        return -1;
    }
    return l;
}

/* Buffer sizes of one TCP pair, 0 = default; set before the handshake so
 * that the advertised window matches them. */
typedef struct tk_bufs {
    int cli_rcv, cli_snd, srv_rcv, srv_snd;
} tk_bufs;

/* *cli connected to *srv over 127.0.0.1 (through a listener that is closed
 * again), both non-blocking and close-on-exec. b may be NULL (all default).
 * 0, or -1 with nothing left open. */
static inline int tk_tcp_pair(int *cli, int *srv, const tk_bufs *b)
{
    static const tk_bufs none;
    struct sockaddr_in sa;
    int l, c, s;

    if (!b)
        b = &none;
    l = tk_listener(&sa, 1, b->srv_rcv, b->srv_snd);
    if (l < 0)
        return -1;
    c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0) {
        close(l);
        return -1;
    }
    tk_set_bufs(c, b->cli_rcv, b->cli_snd);
    if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        close(c);
        close(l);
        return -1;
    }
    s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    close(l);
    if (s < 0) {
        close(c);
        return -1;
    }
    tk_set_nonblock(c, 1);
    tk_set_nonblock(s, 1);
    *cli = c;
    *srv = s;
    return 0;
}

/* A connected AF_UNIX stream pair, non-blocking and close-on-exec. 0 or -1. */
static inline int tk_unix_pair(int *x, int *y)
{
    int sv[2];

    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    *x = sv[0];
    *y = sv[1];
    return 0;
}

/* Closes fd with SO_LINGER 0: the peer gets a RST, not a FIN (what the
 * proxy does on FP_RELAY_RESET, fp_sock_abort). */
static inline void tk_sock_abort(int fd)
{
    struct linger lg = { 1, 0 };

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* Waits (about ms milliseconds at most) until every byte (and FIN) fd sent
 * was acknowledged, so that it sits in the receiver's queue. 0, or -1 on
 * timeout. */
static inline int tk_wait_acked(int fd, int ms)
{
    int k, q = -1;

    for (k = 0; k < ms; k++) {
        if (ioctl(fd, SIOCOUTQ, &q) == 0 && q == 0)
            return 0;
        tk_sleep_ms(1);
    }
    return -1;
}

/* ---- byte pattern ----------------------------------------------------------------------
 *
 * Byte o of the stream with seed s is tk_pat[(s + o) % TK_PAT_LEN].
 * TK_PAT_LEN is not a power of two: a relay that drops or repeats a whole
 * pipe or chunk shifts the stream against the pattern and the compare
 * catches it. tk_pat_init() fills it (deterministic: xorshift32).
 */

#define TK_PAT_LEN ((size_t)MiB + 7)
static unsigned char tk_pat[TK_PAT_LEN] TK_UNUSED;

static inline void tk_pat_init(void)
{
    uint32_t x = 2463534242u;
    size_t i;

    for (i = 0; i < TK_PAT_LEN; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        tk_pat[i] = (unsigned char)(x >> 11);
    }
}

/* Where byte `off` of stream `seed` is; *avail: how many bytes follow it
 * contiguously in tk_pat. */
static inline const unsigned char *tk_pat_span(uint32_t seed, uint64_t off, size_t *avail)
{
    size_t at = (size_t)((seed + off) % TK_PAT_LEN);

    *avail = TK_PAT_LEN - at;
    return tk_pat + at;
}

/* 1 if p[0..n) is bytes off..off+n of stream `seed`, else 0. */
static inline int tk_pat_ok(uint32_t seed, uint64_t off, const unsigned char *p, size_t n)
{
    while (n) {
        size_t k;
        const unsigned char *want = tk_pat_span(seed, off, &k);

        if (k > n)
            k = n;
        if (memcmp(want, p, k))
            return 0;
        p += k;
        n -= k;
        off += k;
    }
    return 1;
}

/* ---- scripted peers ----------------------------------------------------------------------
 *
 * One end of a connection, non-blocking, driven by the test's poll loop:
 *   tk_peer_pre(p)       actions that need no readiness (reset on cue,
 *                        half-close, close), before building the poll set;
 *   tk_peer_events(p)    its POLLIN/POLLOUT interest (0: leave it out);
 *   tk_peer_recv / tk_peer_send when poll reported it ready (any revents).
 * It sends send_total bytes of stream `seed` and checks what it receives
 * against stream `expect_seed`, byte for byte (the first mismatch is kept).
 * All counters are stream offsets. tk_peer_init sets the defaults: reading,
 * no reset, 64 send() calls per tk_peer_send; the script fields are set by
 * the test afterwards.
 */

typedef struct tk_peer {
    int fd;                 /* -1 once closed or reset */
    uint32_t seed;          /* this peer's outgoing stream */
    uint32_t expect_seed;   /* the other peer's stream */
    uint64_t send_total, sent;
    size_t piece;           /* bytes per send() (0: up to 256 KiB) */
    int burst;              /* send() calls per tk_peer_send at the most */
    uint64_t send_after;    /* send only once this much was received */
    int send_after_eof;     /* send only after the other side's EOF */
    int shut_after_send;    /* shutdown(SHUT_WR) once everything is sent */
    int shut_done;
    uint64_t close_after;   /* close() once this much was received and all was sent */
    int close_on_eof;       /* close() once EOF was read and all was sent */
    int closed;
    int reading;            /* 0: do not read (a stalled receiver) */
    uint64_t read_until;    /* non-zero: stop reading at this stream offset */
    uint64_t received;
    int got_eof;
    int mismatch;
    uint64_t mismatch_at;
    int64_t rst_after;      /* >= 0: abort (RST) once this much was received */
    int first_err;          /* first errno of a send or recv */
} tk_peer;

static inline void tk_peer_init(tk_peer *p, int fd, uint32_t seed, uint32_t expect_seed)
{
    memset(p, 0, sizeof(*p));
    p->fd = fd;
    p->seed = seed;
    p->expect_seed = expect_seed;
    p->burst = 64;
    p->reading = 1;
    p->rst_after = -1;
}

static inline int tk_peer_may_send(const tk_peer *p)
{
    return p->fd >= 0 && !p->first_err && p->sent < p->send_total && p->received >= p->send_after &&
           (!p->send_after_eof || p->got_eof);
}

static inline int tk_peer_may_recv(const tk_peer *p)
{
    return p->fd >= 0 && p->reading && !p->got_eof && !p->first_err &&
           (!p->read_until || p->received < p->read_until);
}

/* Sends until EAGAIN, the script says stop, or p->burst calls. */
static inline void tk_peer_send(tk_peer *p)
{
    int k;

    for (k = 0; k < p->burst && tk_peer_may_send(p); k++) {
        size_t n;
        const unsigned char *src = tk_pat_span(p->seed, p->sent, &n);
        uint64_t left = p->send_total - p->sent;
        ssize_t w;

        if (n > left)
            n = (size_t)left;
        if (n > 256 * KiB)
            n = 256 * KiB;
        if (p->piece && n > p->piece)
            n = p->piece;
        w = send(p->fd, src, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR)
                p->first_err = errno;
            return;
        }
        p->sent += (uint64_t)w;
    }
}

/* Receives (64 recv() calls at the most) and checks against the pattern. */
static inline void tk_peer_recv(tk_peer *p)
{
    static unsigned char buf[256 * 1024];
    int k;

    for (k = 0; k < 64 && tk_peer_may_recv(p); k++) {
        size_t want = sizeof(buf);
        ssize_t n;

        if (p->read_until && p->read_until - p->received < want)
            want = (size_t)(p->read_until - p->received);
        n = recv(p->fd, buf, want, MSG_DONTWAIT);
        if (n > 0) {
            if (!p->mismatch && !tk_pat_ok(p->expect_seed, p->received, buf, (size_t)n)) {
                p->mismatch = 1;
                p->mismatch_at = p->received;
            }
            p->received += (uint64_t)n;
        } else if (n == 0) {
            p->got_eof = 1;
        } else {
            if (errno != EAGAIN && errno != EINTR)
                p->first_err = errno;
            return;
        }
    }
}

/* Actions that need no readiness: reset on cue, half-close or close when done. */
static inline void tk_peer_pre(tk_peer *p)
{
    if (p->fd < 0)
        return;
    if (p->rst_after >= 0 && p->received >= (uint64_t)p->rst_after) {
        tk_sock_abort(p->fd);
        p->fd = -1;
        p->closed = 1;
        return;
    }
    if (p->first_err)
        return;
    if (p->shut_after_send && !p->shut_done && p->sent == p->send_total && p->received >= p->send_after &&
        (!p->send_after_eof || p->got_eof)) {
        shutdown(p->fd, SHUT_WR);
        p->shut_done = 1;
    }
    if ((p->close_after && p->received >= p->close_after && p->sent == p->send_total) ||
        (p->close_on_eof && p->got_eof && p->sent == p->send_total)) {
        close(p->fd);
        p->fd = -1;
        p->closed = 1;
    }
}

static inline short tk_peer_events(const tk_peer *p)
{
    return (short)((tk_peer_may_recv(p) ? POLLIN : 0) | (tk_peer_may_send(p) ? POLLOUT : 0));
}

/* The script ran to its end: everything sent (and shut or closed as asked),
 * EOF read if reading; or the peer failed or was reset. */
static inline int tk_peer_done(const tk_peer *p)
{
    if (p->first_err)
        return 1;
    if (p->close_after || p->close_on_eof || p->rst_after >= 0)
        return p->closed;
    if (p->fd < 0)
        return 1;
    if (p->reading && !p->got_eof)
        return 0;
    if (p->sent < p->send_total)
        return 0;
    return !p->shut_after_send || p->shut_done;
}

/* ---- bulk threads ------------------------------------------------------------------------
 *
 * pthread bodies for throughput runs over blocking sockets. tk_xfer_send
 * sends `bytes` bytes (buf[0..len) over and over), then shutdown(SHUT_WR);
 * tk_xfer_recv counts what it receives until EOF. Both set err to the first
 * errno, `cpu` to the thread's CPU seconds at the end; the receiver sets
 * t_end (tk_now()) when it saw EOF.
 */

typedef struct tk_xfer {
    int fd;
    const unsigned char *buf; /* sender: what to send; len > 0 */
    size_t len;
    uint64_t bytes;         /* sender: how much in all */
    uint64_t done;          /* sent or received so far */
    double t_end;
    double cpu;
    int err;
} tk_xfer;

static inline void *tk_xfer_send(void *arg)
{
    tk_xfer *x = arg;

    while (x->done < x->bytes) {
        uint64_t left = x->bytes - x->done;
        ssize_t w = send(x->fd, x->buf, left < x->len ? (size_t)left : x->len, MSG_NOSIGNAL);

        if (w < 0) {
            if (errno == EINTR)
                continue;
            x->err = errno;
            break;
        }
        x->done += (uint64_t)w;
    }
    shutdown(x->fd, SHUT_WR);
    x->cpu = tk_thread_cpu();
    return NULL;
}

static inline void *tk_xfer_recv(void *arg)
{
    tk_xfer *x = arg;
    unsigned char *buf = malloc(1 << 20);

    while (buf) {
        ssize_t n = recv(x->fd, buf, 1 << 20, 0);

        if (n > 0) {
            x->done += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            x->err = errno;
        break;
    }
    if (!buf)
        x->err = ENOMEM;
    x->t_end = tk_now();
    x->cpu = tk_thread_cpu();
    free(buf);
    return NULL;
}

/* ---- http1: the second copy of the parser ----------------------------------------------
 *
 * With TESTKIT_HTTP1_ALT defined before the include (once per program, with
 * csrc/http1.c linked as usual): csrc/http1.c is compiled into this
 * translation unit a second time, its public names prefixed alt_, the other
 * way round from the linked copy: with `#pragma GCC target("sse4.2")` when
 * the build is scalar, with HTTP1_NO_SIMD when the build enables SSE4.2.
 * TK_HTTP1_HAVE_ALT is then defined; it is not with compilers other than
 * GCC or off x86, where only the linked copy exists. http1.h is included
 * first, so that the unprefixed declarations exist too.
 */
#ifdef TESTKIT_HTTP1_ALT
#include "http1.h"
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define TK_HTTP1_HAVE_ALT 1
#define http1_limits_init alt_http1_limits_init
#define http1_parser_init alt_http1_parser_init
#define http1_parser_reset alt_http1_parser_reset
#define http1_parse_request alt_http1_parse_request
#define http1_parse_response alt_http1_parse_response
#define http1_chunked_init alt_http1_chunked_init
#define http1_chunked_decode alt_http1_chunked_decode
#define http1_request_framing alt_http1_request_framing
#define http1_response_framing alt_http1_response_framing
#define http1_span_ieq alt_http1_span_ieq
#define http1_simd alt_http1_simd
#ifdef __SSE4_2__
#define HTTP1_NO_SIMD 1
#include "../../csrc/http1.c"
#undef HTTP1_NO_SIMD
#else
#pragma GCC push_options
#pragma GCC target("sse4.2")
#include "../../csrc/http1.c"
#pragma GCC pop_options
#endif
#undef http1_limits_init
#undef http1_parser_init
#undef http1_parser_reset
#undef http1_parse_request
#undef http1_parse_response
#undef http1_chunked_init
#undef http1_chunked_decode
#undef http1_request_framing
#undef http1_response_framing
#undef http1_span_ieq
#undef http1_simd
#endif
#endif /* TESTKIT_HTTP1_ALT */

#endif /* FASTPROXY_TESTKIT_H */
