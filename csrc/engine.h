/* engine.h - drives every relay of one worker from C, through one epoll set.
 *
 * Why: with per-fd registrations in the Python event loop, each connection
 * cost ~14 epoll_ctl calls, an ioctl(FIONBIO) per fd and a Python callback per
 * readiness event, and libuv silently drops a poll handle on EPOLLERR (a
 * reset that arrives with data was then never seen). Here each socket is
 * registered ONCE, edge-triggered (EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET), and
 * removed by close(). The worker's event loop watches only the engine's
 * epoll fd and calls fp_engine_run() when it is readable: Python then runs
 * once per batch of ready connections, not once per event.
 *
 * Edge-triggered rules the engine keeps:
 *  - every pump passes FP_DRAIN (relay.h): a read stops only at EAGAIN, EOF,
 *    an error, a full pipe or the fairness budget, never at a short read.
 *    Under edge triggering a short read proves nothing: a reset or EOF queued
 *    behind the data (EPOLLERR/EPOLLHUP/EPOLLRDHUP) raises no further edge,
 *    and neither do bytes left behind when small segments ran the pipe out of
 *    slots before its bytes. It costs one read returning EAGAIN per burst;
 *  - a relay that stops early (the pump's fairness budget: FP_DIR_MORE, or
 *    bytes in flight towards a dst that is not known full) is put on the
 *    engine's pending list and pumped again on the next run, because no new
 *    edge will come for bytes already queued; fp_engine_run() reports
 *    whether such work remains, and the caller then schedules another run
 *    without waiting for the epoll fd. A direction whose read is suppressed
 *    (full pipe, FP_DIR_STALL) waits for dst's EPOLLOUT edge instead (the
 *    kernel raises it: the write that filled dst set SOCK_NOSPACE), and the
 *    pump re-reads src after dst took bytes;
 *  - a relay is pumped at most once per run, and a relay re-pumped from the
 *    pending list without making progress is dropped from it after a few
 *    tries (stats.spin_breaks, which the tests require to stay 0): no relay
 *    can spin;
 *  - an EPOLLERR that the pump did not turn into FP_RELAY_RESET (its read
 *    was suppressed: full pipe, stalled receiver) is checked with
 *    getsockopt(SO_ERROR): a dead socket ends the relay (FP_END_RESET) now,
 *    not when the other side drains;
 *  - while the upstream connect is in progress, readiness of the downstream
 *    socket is remembered and served once the connect completes. B's first
 *    event settles the connect: EPOLLOUT without EPOLLERR/EPOLLHUP is success
 *    (a failed TCP connect always sets sk_err, which tcp_poll() reports as
 *    EPOLLERR), otherwise getsockopt(SO_ERROR) says why it failed.
 *
 * Pipes: each direction's pipe comes from the engine's pool of empty pipes
 * (already sized) and goes back there when the direction is idle (in_flight
 * 0 at the end of a pump) or ends with nothing in flight; a pipe that may
 * hold bytes is closed instead. This saves the pipe2 + fcntl + 2 close per
 * direction that short connections paid, and idle connections hold no pipe.
 * When chunk is the kernel default (16 pages: 64 KiB, the proxy's default
 * buffer_bytes) new pipes need no F_SETPIPE_SZ either.
 *
 * Endings: FP_RELAY_DONE closes both sockets (the pump skips the last
 * shutdown(SHUT_WR): close() sends that FIN, and since both sockets were read
 * to EOF nothing unread turns it into a RST). A reset, an abort or a timeout
 * aborts both (SO_LINGER {1, 0} + close: the peers see RST); a failed or
 * timed-out connect aborts A and plainly closes B.
 *
 * SIGPIPE: splice() into a socket whose peer is gone raises SIGPIPE (there is
 * no MSG_NOSIGNAL for it). The worker ignores SIGPIPE (CPython sets SIG_IGN at
 * startup), which costs nothing. If fp_engine_new() finds SIGPIPE not ignored,
 * every fp_engine_run() blocks it in the calling thread around its pumps and
 * swallows one it raised (3 extra syscalls per run, none per connection); a
 * disposition changed after fp_engine_new() is not noticed.
 *
 * Ownership: the engine borrows relays (the caller allocates and frees the
 * fp_relay, and keeps it alive while registered, i.e. until fp_engine_run()
 * reported it or fp_engine_finish() returned); relays borrow sockets until
 * they end, then the engine closes them; the engine owns the epoll fd and the
 * pooled pipes. Single-threaded: one engine per event loop, no locking.
 */
#ifndef FASTPROXY_ENGINE_H
#define FASTPROXY_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "relay.h"

/* How a relay ended: fp_engine_run() reports each finished relay once with
 * one of these in *how, after closing (DONE) or aborting (the rest) both
 * sockets and returning or closing its pipes. The same value is left in
 * r->eng_how. */
#define FP_END_DONE            1  /* both halves closed cleanly */
#define FP_END_RESET           2  /* a side reset or failed (r->error, r->reset_side) */
#define FP_END_CONNECT_FAIL    3  /* the upstream connect failed (r->error, SO_ERROR) */
#define FP_END_CONNECT_TIMEOUT 4  /* fp_engine_finish() while connecting (r->eng_how only) */
#define FP_END_ABORTED         5  /* fp_engine_finish() after connecting (r->eng_how only) */

/* r->eng_state bits (read-only for callers). */
#define FP_ENG_REGISTERED 0x01 /* added, not yet ended */
#define FP_ENG_CONNECTING 0x02 /* the upstream connect is in progress */
#define FP_ENG_QUEUED     0x04 /* on the pending list (pumped by the next run) */
#define FP_ENG_FINISHED   0x08 /* ended, sockets closed, waiting in the finished queue */
#define FP_ENG_EDGE       0x10 /* internal: an epoll edge arrived since the last pump */
#define FP_ENG_ERR_A      0x20 /* internal: EPOLLERR on A since the last pump */
#define FP_ENG_ERR_B      0x40 /* internal: EPOLLERR on B since the last pump */

typedef struct fp_engine fp_engine;

typedef struct fp_finished {
    fp_relay *relay;
    int how;                 /* FP_END_* */
} fp_finished;

/* Counters since fp_engine_new() (for metrics and tests). */
typedef struct fp_engine_stats {
    uint64_t runs;           /* fp_engine_run() calls */
    uint64_t events;         /* epoll events collected */
    uint64_t pumps;          /* fp_relay_pump() calls */
    uint64_t pended;         /* times a relay was put on the pending list */
    uint64_t more;           /* runs that returned *more = 1 */
    uint64_t spin_breaks;    /* relays dropped from the pending list for making no progress */
    uint64_t deferred;       /* relays a run left unpumped (its budget: 8 MiB or 512 pumps) */
    uint64_t connects_ok, connects_failed;
    uint64_t finished[6];    /* relays ended, by FP_END_* */
    uint64_t pipes_created;  /* pipe2() because the pool was empty */
    uint64_t pipes_reused;   /* pipes taken from the pool */
    uint64_t pipes_returned; /* empty pipes given back to the pool */
    uint64_t pipes_closed;   /* pipes closed (held bytes, odd size, pool full) */
    unsigned pool_size;      /* empty pipes in the pool now */
    unsigned pending;        /* relays on the pending list now */
    unsigned queued;         /* finished relays not yet reported */
    unsigned registered;     /* fp_engine_count() */
    int sigpipe_guard;       /* 1: SIGPIPE was not ignored, runs block it */
} fp_engine_stats;

/* A new engine whose pool keeps at most pool_max empty pipes of `chunk`
 * bytes (chunk is clamped as fp_relay_init() clamps it; relays of another
 * chunk work, without the pool). NULL with errno set on failure. */
fp_engine *fp_engine_new(size_t chunk, unsigned pool_max);

/* The epoll fd to watch for readability. */
int fp_engine_fd(const fp_engine *e);

/* Registers an initialised relay (fp_relay_init, never pumped), whose two
 * sockets are connected (or, for B, connecting) non-blocking stream sockets.
 * `connecting` says the upstream socket's non-blocking connect is still in
 * progress. `user` is stored in r->user and handed back untouched (the Python
 * wrapper). Sets r->pool and r->fin_by_close. Costs two epoll_ctl(ADD);
 * readiness already present (bytes the client sent first, a connect that
 * already completed) is reported by the next run. The sockets should have no
 * other descriptor (dup, inherited by fork): close() then would not remove
 * them from the epoll set (harmless, stale events are recognised and
 * dropped, but the registration lingers). 0 or -errno; on error nothing is
 * registered and the caller still owns the sockets. */
int fp_engine_add(fp_engine *e, fp_relay *r, int connecting, void *user);

/* Waits for nothing: collects ready events (epoll_wait with timeout 0, up to
 * a batch of 256), pumps the affected relays and the pending list (each at
 * most once per run; a run stops pumping after 8 MiB moved or 512 pumps and
 * leaves the rest, first in line, on the pending list: a run is a few
 * milliseconds at most), and writes up to `max` finished relays into out[]
 * (oldest first). Returns how many it wrote (further finished relays stay
 * queued for the next call), or -errno (epoll_wait failed; nothing was
 * pumped). *more is set to 1 when work remains that no epoll edge will
 * announce (pending relays or queued finished ones): the caller must call
 * again soon (loop.call_soon), else 0. Events beyond the batch keep the
 * epoll fd readable. out may be NULL when max is 0. */
int fp_engine_run(fp_engine *e, fp_finished *out, int max, int *more);

/* Ends a registered relay now (idle timeout, drain deadline, connect timeout):
 * aborts both sockets (while connecting: aborts A, closes B), recycles or
 * closes its pipes, unregisters it, sets r->eng_how (FP_END_CONNECT_TIMEOUT
 * while connecting, else FP_END_ABORTED), and returns without reporting it
 * through fp_engine_run(). Works on a relay on the pending list, and on one
 * that already ended and waits in the finished queue: that one is only
 * dequeued (its sockets were closed already; r->eng_how keeps how it ended).
 * A relay that was already reported, or never added, is left alone. */
void fp_engine_finish(fp_engine *e, fp_relay *r);

/* Relays currently registered: added and neither reported by
 * fp_engine_run() nor finished with fp_engine_finish() (finished relays
 * still waiting in the queue count). */
unsigned fp_engine_count(const fp_engine *e);

/* Fills *st. */
void fp_engine_get_stats(const fp_engine *e, fp_engine_stats *st);

/* Closes the epoll fd and the pooled pipes. Registered relays should have
 * been finished first; any left are detached (no pool, no engine state) with
 * their sockets and pipes untouched. */
void fp_engine_free(fp_engine *e);

#endif
