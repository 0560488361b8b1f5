/* relay.h - zero-copy L4 relay between two connected, non-blocking stream sockets.
 *
 * Data flows socket -> pipe -> socket with splice(2), so payload bytes never
 * enter user space. Where splice() is refused for a socket (EINVAL, ENOSYS,
 * EOPNOTSUPP) that direction falls back to read()/write() through a heap
 * buffer of `chunk` bytes, allocated only then.
 *
 * The relay is driven by the caller's event loop: the caller tells
 * fp_relay_pump() which fds became ready, and the pump returns the readiness
 * it wants next. The relay never blocks and never sleeps.
 *
 * Ownership: the relay BORROWS the two socket fds (it never closes them) and
 * OWNS its pipes and fallback buffers (released by fp_relay_free()).
 *
 * Naming: side A is the downstream (client) socket, side B the upstream.
 * Direction 0 moves A -> B, direction 1 moves B -> A.
 *
 * Caller obligations:
 *  - Readiness must be level-triggered (epoll without EPOLLET, poll, libuv
 *    and uvloop readers/writers), unless every pump passes FP_DRAIN and the
 *    caller re-pumps the directions that FP_DIR_MORE and writable in-flight
 *    bytes describe (engine.c does exactly that with one edge-triggered epoll
 *    set; see engine.h). Without FP_DRAIN a pump may stop early for fairness,
 *    or conclude from a short read that src is drained, and leave bytes in a
 *    socket it still asks to read; a level-triggered loop reports it again.
 *  - SIGPIPE must be ignored (CPython does this at startup): splice() into a
 *    socket whose peer is gone raises SIGPIPE, as write() would; there is no
 *    MSG_NOSIGNAL for splice(). (fp_engine_run() lifts this obligation: it
 *    blocks and swallows SIGPIPE around its pumps when it is not ignored.)
 */
#ifndef FASTPROXY_RELAY_H
#define FASTPROXY_RELAY_H

#include <stddef.h>
#include <stdint.h>

/* Readiness bits: used both for events passed in and interests returned. */
#define FP_READ_A   0x01
#define FP_WRITE_A  0x02
#define FP_READ_B   0x04
#define FP_WRITE_B  0x08
#define FP_WANT_MASK 0x0f
/* Events only, never returned: read every src this pump reads until EAGAIN,
 * EOF or an error (or until the pipe/buffer is full or the fairness budget is
 * spent), instead of concluding from a short read that src is drained. A
 * short read proves nothing under edge-triggered readiness: the pipe may have
 * run out of slots (small segments), and a FIN or a reset queued behind the
 * data announces itself by no further edge. Costs one read returning EAGAIN
 * per readable burst. */
#define FP_DRAIN    0x40

/* Terminal results (returned with no FP_* want bits set). */
#define FP_RELAY_DONE   0x10 /* both directions saw EOF and were shut down cleanly */
#define FP_RELAY_RESET  0x20 /* a side reset or failed; the caller aborts BOTH sockets (fp_sock_abort) */

/* Per-direction state flags (fp_relay_dir.flags). */
#define FP_DIR_EOF       0x01 /* src returned EOF; nothing more will be read */
#define FP_DIR_SHUT      0x02 /* dst was shut down for writing (half-close propagated) */
#define FP_DIR_FALLBACK  0x04 /* this direction uses read()/write(), not splice() */
#define FP_DIR_DST_FULL  0x08 /* last write to dst hit EAGAIN or was short: waiting for writability */
#define FP_DIR_STALL     0x10 /* internal: a read into the pipe came back short or EAGAIN and
                               * bytes remain in it. The pipe may be out of slots (a slot holds
                               * one piece of one skb; small segments make small pieces), so
                               * in_flight < pipe_cap does not prove there is room: stop asking
                               * to read until dst takes bytes. */
#define FP_DIR_MORE      0x20 /* the last read stopped for the fairness budget (or the loop's step
                               * bound) before src was drained: src may hold bytes that no new
                               * readiness edge will announce. Cleared when a read finds src
                               * drained or at EOF. Edge-triggered callers re-pump such a
                               * direction with its FP_READ_x bit (unless it is read-suppressed:
                               * then dst's writability resumes it). */
/* Test hook: splice() in this direction fails with EINVAL without being
 * called, as on a kernel or socket type that refuses it, so tests can force
 * the fallback (no socket type refuses splice on current kernels). Setting it
 * between two pumps while bytes sit in the pipe exercises the pipe drain.
 * Setting FP_DIR_FALLBACK itself before the first pump starts a direction in
 * read()/write() mode without ever creating its pipe. */
#define FP_DIR_TEST_NOSPLICE 0x100

/* A counter the relay bumps by the bytes it delivers (may be NULL). Counters
 * are single-writer (one worker process), so a relaxed load+store suffices.
 * Each direction has FP_DIR_COUNTERS of them, all bumped by the same amount:
 * the worker uses [0] for the side read from, [1] for the side written to,
 * [2] for the Istio TCP series (dir 0: bytes received from downstream,
 * dir 1: bytes sent to downstream; see h1proxy.h, "Series"). */
#define FP_DIR_COUNTERS 3
typedef uint64_t fp_counter;

typedef struct fp_relay_dir {
    int src, dst;            /* borrowed sockets */
    int pipe_r, pipe_w;      /* owned pipe, -1 until the first readable event */
    size_t pipe_cap;         /* the pipe's real capacity (F_SETPIPE_SZ/F_GETPIPE_SZ), 0 if none */
    size_t in_flight;        /* bytes read from src, not yet written to dst (pipe or buffer) */
    unsigned flags;          /* FP_DIR_* */
    char *buf;               /* fallback buffer (chunk bytes), NULL unless FP_DIR_FALLBACK */
    size_t buf_off;          /* fallback: offset of the first unsent byte in buf */
    size_t buf_len;          /* fallback: end of the unsent bytes in buf */
    uint64_t spliced;        /* bytes delivered to dst through the pipe */
    uint64_t copied;         /* bytes delivered to dst through the fallback buffer */
    fp_counter *ctr[FP_DIR_COUNTERS]; /* bumped by bytes delivered to dst; any may be NULL */
} fp_relay_dir;

/* A pool of EMPTY pipes, all of one capacity, shared by the relays of one
 * event loop (engine.c owns one per worker). A relay whose `pool` is set takes
 * a pipe from it instead of pipe2() + F_SETPIPE_SZ, and gives a pipe back
 * (instead of two close()) only when the pipe holds no byte: its direction's
 * in_flight is 0, which the pump's accounting makes exact (a failed splice()
 * moves nothing; a partial one returns its count). A pipe that may hold bytes
 * (relay reset or freed mid-stream) is closed, never pooled. Single-threaded:
 * one pool per loop, no locking. */
typedef struct fp_pipe_pool {
    int *fds;                /* 2 * max: pooled pipe k is fds[2k] (read end), fds[2k + 1] */
    unsigned n;              /* pipes in the pool now */
    unsigned max;            /* never more than this (0: nothing is ever pooled) */
    size_t chunk;            /* relays whose chunk equals this may use the pool */
    size_t cap;              /* capacity of every pooled pipe; 0 until the first pipe is made */
    uint64_t created;        /* pipes made with pipe2() because the pool was empty */
    uint64_t reused;         /* pipes taken from the pool */
    uint64_t returned;       /* empty pipes given back */
    uint64_t closed;         /* pipes closed: held bytes, odd capacity, or pool full */
} fp_pipe_pool;

/* Prepares an empty pool for relays of `chunk` (clamped as fp_relay_init()
 * clamps it). 0, or -ENOMEM. */
int fp_pipe_pool_init(fp_pipe_pool *p, size_t chunk, unsigned max);

/* Closes every pooled pipe and frees the array. Safe twice, and on a
 * zero-filled pool. */
void fp_pipe_pool_destroy(fp_pipe_pool *p);

typedef struct fp_relay {
    fp_relay_dir dir[2];     /* dir[0]: A -> B, dir[1]: B -> A */
    size_t chunk;            /* pipe size asked of F_SETPIPE_SZ; fallback buffer size */
    uint32_t activity;       /* incremented by every pump that moved bytes (idle sweeps compare it) */
    int error;               /* errno that caused FP_RELAY_RESET, else 0 */
    int reset_side;          /* 0 = A, 1 = B: the side whose read/write failed; -1 if none
                              * (a local failure: ENOMEM for the fallback buffer) */

    /* ---- engine linkage ----------------------------------------------------
     * For engine.c (engine.h). fp_relay_init() zeroes all of it, and a relay
     * driven directly with fp_relay_pump() never needs it. The pump reads
     * only `pool` and `fin_by_close`; every eng_* field is the engine's. */
    void *user;              /* fp_engine_add()'s `user`, handed back untouched */
    fp_pipe_pool *pool;      /* non-NULL: pipes come from / empty pipes go back to this pool;
                              * an empty pipe is also given back at the end of any pump that
                              * leaves its direction idle (in_flight 0) while the pool has
                              * room, so idle connections hold no pipe */
    int fin_by_close;        /* the caller close()s both sockets as soon as the pump returns
                              * FP_RELAY_DONE: the last direction's shutdown(SHUT_WR) is
                              * skipped, close() sends that FIN (both sockets were read to
                              * EOF, so no unread byte turns the close into a RST) */
    unsigned eng_state;      /* FP_ENG_* (engine.h): registered, connecting, queued, finished */
    int eng_events;          /* FP_* event bits for the next pump; while connecting, A's
                              * readiness remembered until the connect completes */
    int eng_how;             /* FP_END_* (engine.h) once the relay ended, else 0 */
    uint32_t eng_slot;       /* index in the engine's registration table */
    uint32_t eng_pumps;      /* fp_relay_pump() calls the engine made for this relay */
    uint32_t eng_idle;       /* consecutive re-pumps from the pending list without progress */
    struct fp_relay *eng_prev, *eng_next; /* pending list or finished queue */
} fp_relay;

/* Prepares r for sockets a (downstream) and b (upstream). No syscalls, no
 * allocation. chunk is clamped to [4096, 16 MiB]. Counters start NULL, and
 * so does the engine linkage (no pool).
 * Each direction's pipe is created on its first readable event (taken from
 * r->pool when set) and sized with F_SETPIPE_SZ(chunk); if that is refused
 * (EPERM: pipe-max-size, or the user's pipe-user-pages-soft exhausted) the
 * default size is kept, and pipe_cap says what was obtained. When chunk is
 * the kernel's default pipe size (16 pages: 64 KiB with 4 KiB pages, the
 * proxy's default buffer_bytes) no fcntl() is made at all and pipe_cap is
 * that default. (Over pipe-user-pages-soft the kernel gives new pipes only 2
 * pages; pipe_cap then overstates the room, reads come back short or EAGAIN,
 * and the FP_DIR_STALL logic keeps the pump correct, at 8 KiB a turn.) If
 * pipe2() itself fails (EMFILE) the direction uses the read()/write()
 * fallback. */
void fp_relay_init(fp_relay *r, int a, int b, size_t chunk);

/* Makes progress after the readiness in `events` (FP_READ_x / FP_WRITE_x
 * bits, plus FP_DRAIN for edge-triggered callers; spurious bits are harmless,
 * they only cost a syscall returning EAGAIN). Moves as many bytes as possible
 * without blocking, in the affected directions only, and propagates
 * half-close: once a direction's src hit EOF and its in-flight bytes are
 * delivered, dst gets shutdown(SHUT_WR) (not for the last direction when
 * r->fin_by_close: the caller's close() sends that FIN).
 * Backpressure: a direction stops asking to read while its pipe/buffer is
 * full (or FP_DIR_STALL), and asks for dst writability instead. In the call
 * where a direction is both at EOF and empty, dst is shut down and that
 * direction's pipe and buffer are released (a half-closed connection may
 * live long; it should not hold pipe pages it will never use again).
 * Resets: a read error on src other than EAGAIN/EINTR, a write error on dst
 * (EPIPE, ECONNRESET, ...), or shutdown(dst) failing (ENOTCONN: dst was
 * reset) end the relay with FP_RELAY_RESET.
 * Returns the readiness wanted next (FP_WANT_MASK bits), or FP_RELAY_DONE,
 * or FP_RELAY_RESET (r->error, r->reset_side say why). After a terminal
 * result the caller must not call fp_relay_pump() again. */
int fp_relay_pump(fp_relay *r, int events);

/* For edge-triggered callers, after a non-terminal pump: the FP_READ_x /
 * FP_WRITE_x bits of work that no readiness edge will announce, to be passed
 * to a later pump (with FP_DRAIN) without waiting for the loop:
 *  - FP_WRITE_x: a direction holds bytes for a dst not known to be full
 *    (FP_DIR_DST_FULL clear), e.g. the pump's step bound was hit;
 *  - FP_READ_x: a direction stopped reading for the budget (FP_DIR_MORE) and
 *    its read is not suppressed (a suppressed read resumes when dst takes
 *    bytes, after dst's EPOLLOUT edge or the FP_WRITE_x above).
 * 0 when every open direction waits for an edge (src drained, or dst full).
 * No syscalls. */
int fp_relay_carry(const fp_relay *r);

/* The interest set for a freshly initialised relay: FP_READ_A | FP_READ_B. */
int fp_relay_start(fp_relay *r);

/* Closes the pipes (an empty one goes back to r->pool when set) and frees
 * fallback buffers. Safe to call twice, and on a zero-filled fp_relay that
 * fp_relay_init() never saw (it closes no fd 0). Does not touch the borrowed
 * sockets. */
void fp_relay_free(fp_relay *r);

#endif
