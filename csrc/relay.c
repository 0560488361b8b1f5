/* relay.c - the splice(2) pump behind relay.h.
 *
 * Each direction moves src -> pipe -> dst. For every direction that got an
 * event, one pump loops:
 *
 *     write what the pipe holds to dst   (skipped while dst is known full)
 *     read src into the pipe's free space (skipped once src looked drained)
 *
 * until src is drained, dst is full and the pipe has no room, src hit EOF,
 * or the fairness budget is spent. Writing before reading keeps the pipe as
 * empty as possible, so each read can ask for the whole capacity and every
 * syscall moves a large batch.
 *
 * Syscall economy (syscalls and wakeups are what the relay itself costs):
 *  - a read never asks for more than the pipe's free space, and we never
 *    splice into a full pipe: its EAGAIN would be indistinguishable from
 *    src's;
 *  - a short read means src's receive queue was emptied (tcp_splice_read
 *    makes one pass when non-blocking), so src is not read again in this
 *    call; the level-triggered loop says so if more arrived meanwhile.
 *    Not under FP_DRAIN (edge-triggered callers): there a read stops only at
 *    EAGAIN, EOF or an error, because the pass may also have stopped when
 *    the pipe ran out of slots, or before a FIN or a reset queued behind the
 *    data, and no new edge would ever report those;
 *  - a short write means dst's send buffer filled, so it counts as EAGAIN
 *    without paying for the EAGAIN (the kernel set SOCK_NOSPACE before
 *    returning short, so an edge-triggered EPOLLOUT follows too).
 *
 * Pipe pool (r->pool, engine.c): pipes are taken from it instead of pipe2(),
 * and go back to it only empty (in_flight == 0). With a pool a pump also
 * parks the pipe of a direction it leaves idle, so that idle connections
 * hold no pipe (pipe-user-pages-soft counts a pipe's capacity, used or not).
 */
#define _GNU_SOURCE
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK_MIN ((size_t)4096)
#define CHUNK_MAX ((size_t)16 << 20)

/* Fairness: a direction stops reading once one pump has read this much (it
 * always reads at least once). A peer that refills its socket as fast as we
 * drain it would otherwise keep one pump running indefinitely, starving the
 * other direction and every other connection on the worker's loop; 2 MiB is
 * a millisecond or two of loopback traffic. */
#define PUMP_BUDGET ((size_t)2 << 20)
/* Hard bound on loop turns (EINTR, pipe drain after a fallback switch, 4 KiB
 * chunks). The state stays consistent if it is hit: the returned interests
 * resume the work. */
#define PUMP_STEPS 1024

#define SPLICE_FLAGS (SPLICE_F_MOVE | SPLICE_F_NONBLOCK)

/* Interest bits of direction i's src (read) and dst (write). */
static const int want_read[2] = { FP_READ_A, FP_READ_B };
static const int want_write[2] = { FP_WRITE_B, FP_WRITE_A };
/* Direction i reads side i and writes side 1 - i. */
#define SRC_SIDE(i) (i)
#define DST_SIDE(i) (1 - (i))

static int fail(fp_relay *r, int side, int err)
{
    r->error = err ? err : EIO;
    r->reset_side = side;
    return -1;
}

/* splice() refused for this fd pair: use read()/write() instead. ENOTSUP is
 * EOPNOTSUPP on Linux. */
static int splice_unsupported(int err)
{
    return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP;
}

static size_t clamp_chunk(size_t chunk)
{
    if (chunk < CHUNK_MIN)
        return CHUNK_MIN;
    if (chunk > CHUNK_MAX)
        return CHUNK_MAX;
    return chunk;
}

/* The capacity pipe2() gives: PIPE_DEF_BUFFERS (16) pages. */
static size_t pipe_default_size(void)
{
    long pg = sysconf(_SC_PAGESIZE);

    return 16 * (size_t)(pg > 0 ? pg : 4096);
}

/* r's pool, if its pipes are the size r asks for. */
static fp_pipe_pool *pool_of(const fp_relay *r)
{
    return r->pool && r->pool->chunk == r->chunk ? r->pool : NULL;
}

/* Gives d's pipe to the pool if it is certainly empty and the pool takes it.
 * Returns 1 when the pool took it (d no longer has a pipe). */
static int pool_give(fp_relay *r, fp_relay_dir *d)
{
    fp_pipe_pool *p = pool_of(r);

    if (!p || !d->pipe_cap || d->in_flight || d->pipe_cap != p->cap || p->n >= p->max)
        return 0;
    p->fds[2 * p->n] = d->pipe_r;
    p->fds[2 * p->n + 1] = d->pipe_w;
    p->n++;
    p->returned++;
    d->pipe_r = d->pipe_w = -1;
    d->pipe_cap = 0;
    return 1;
}

/* pipe_cap != 0 marks the pipe as ours, so that a zero-filled fp_relay that
 * never went through fp_relay_init() (say, a wrapper whose constructor
 * failed early) does not close fd 0 when freed. The pool is looked at only
 * then, so a relay freed after its engine (pool gone) touches no pool. */
static void close_pipe(fp_relay *r, fp_relay_dir *d)
{
    if (d->pipe_cap && !pool_give(r, d)) {
        close(d->pipe_r);
        close(d->pipe_w);
        if (pool_of(r))
            pool_of(r)->closed++;
    }
    d->pipe_r = d->pipe_w = -1;
    d->pipe_cap = 0;
}

static void release(fp_relay *r, fp_relay_dir *d)
{
    close_pipe(r, d);
    free(d->buf);
    d->buf = NULL;
    d->buf_off = d->buf_len = 0;
}

static int open_pipe(fp_relay *r, fp_relay_dir *d)
{
    fp_pipe_pool *pool = pool_of(r);
    size_t def;
    int p[2], cap;

    if (pool && pool->n && pool->cap) {
        pool->n--;
        d->pipe_r = pool->fds[2 * pool->n];
        d->pipe_w = pool->fds[2 * pool->n + 1];
        d->pipe_cap = pool->cap;
        pool->reused++;
        return 0;
    }
    if (pipe2(p, O_NONBLOCK | O_CLOEXEC) < 0)
        return -1;
    def = pipe_default_size();
    /* The kernel's default size needs no fcntl() at all (the proxy's default
     * buffer_bytes). Otherwise F_SETPIPE_SZ returns the size it set (a
     * power-of-two number of pages), which saves an F_GETPIPE_SZ. */
    cap = r->chunk == def ? (int)def : fcntl(p[1], F_SETPIPE_SZ, (int)r->chunk);
    if (pool) {
        pool->created++;
        if (cap > 0 && !pool->cap)
            pool->cap = (size_t)cap; /* what every pooled pipe has */
    }
    if (cap < 0) {
        /* Refused (EPERM: above pipe-max-size, or this user's pipes already
         * hold pipe-user-pages-soft pages). The default is then not
         * necessarily 64 KiB: over the soft limit new pipes get 2 pages.
         * Ask, because reads are sized by it. */
        cap = fcntl(p[1], F_GETPIPE_SZ);
    }
    if (cap <= 0) {
        close(p[0]);
        close(p[1]);
        return -1;
    }
    d->pipe_r = p[0];
    d->pipe_w = p[1];
    d->pipe_cap = (size_t)cap;
    return 0;
}

/* n bytes reached dst. The counters have a single writer (this worker), so
 * a relaxed load + store is enough and avoids a locked add; the atomics only
 * keep the 64-bit accesses untorn for the manager that sums them. */
static void deliver(fp_relay_dir *d, size_t n, int via_pipe)
{
    int k;

    d->in_flight -= n;
    if (via_pipe)
        d->spliced += n;
    else
        d->copied += n;
    for (k = 0; k < FP_DIR_COUNTERS; k++) {
        fp_counter *c = d->ctr[k];
        if (c)
            __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
    }
}

/* True when the last pump stopped asking for src readability although src
 * is not at EOF (pipe or buffer full, or FP_DIR_STALL). No event will then
 * tell us src has bytes, so once dst has taken some we try src ourselves. */
static int read_suppressed(const fp_relay_dir *d)
{
    if (d->flags & FP_DIR_EOF)
        return 0;
    if (d->flags & FP_DIR_FALLBACK)
        return d->in_flight > 0;
    return d->pipe_cap && (d->in_flight >= d->pipe_cap || (d->flags & FP_DIR_STALL));
}

/* Half-close: src is at EOF and everything it sent was delivered, so pass
 * the FIN on. shutdown() fails (ENOTCONN) when dst was reset meanwhile; the
 * FIN cannot be delivered, which is a reset like any failed write. */
static int propagate_eof(fp_relay *r, int i)
{
    fp_relay_dir *d = &r->dir[i];

    if (!(d->flags & FP_DIR_EOF) || d->in_flight || (d->flags & FP_DIR_SHUT))
        return 0;
    /* The last direction of a relay whose caller closes both sockets on
     * FP_RELAY_DONE: close() sends this FIN. Both sockets were read to EOF,
     * so the close cannot turn into a RST for unread data. */
    if (!(r->fin_by_close && (r->dir[1 - i].flags & FP_DIR_SHUT)) && shutdown(d->dst, SHUT_WR) < 0)
        return fail(r, DST_SIDE(i), errno);
    d->flags |= FP_DIR_SHUT;
    d->flags &= ~(unsigned)(FP_DIR_DST_FULL | FP_DIR_STALL);
    /* This direction is over, the connection may not be: give back the
     * pipe's fds and pages now. */
    release(r, d);
    return 0;
}

/* After a pump's loop over direction d: did its reads leave src with bytes
 * that no new readiness edge will announce? Only when they stopped for the
 * budget or the step bound; a full pipe, FP_DIR_STALL or a full fallback
 * buffer suppress reading, and dst's writability resumes it. */
static void note_more(fp_relay_dir *d, int try_read, int drained, size_t budget, int step)
{
    if (!try_read)
        return;
    if (drained || (d->flags & FP_DIR_EOF))
        d->flags &= ~(unsigned)FP_DIR_MORE;
    else if (!budget || step >= PUMP_STEPS)
        d->flags |= FP_DIR_MORE;
}

/* read()/write() through d->buf. Bytes that splice() left in the pipe go out
 * first, in order, read from the pipe into the buffer (the dst may be the
 * fd that refused splice, so the pipe cannot simply be spliced out). */
static int pump_copy(fp_relay *r, int i, int try_read, int drain)
{
    fp_relay_dir *d = &r->dir[i];
    size_t budget = PUMP_BUDGET;
    int drained = 0, step;

    if (!d->buf) {
        d->buf = malloc(r->chunk);
        if (!d->buf)
            return fail(r, -1, ENOMEM);
        d->buf_off = d->buf_len = 0;
    }
    for (step = 0; step < PUMP_STEPS; step++) {
        size_t len = d->buf_len - d->buf_off;
        ssize_t n;

        if (len) {
            if (d->flags & FP_DIR_DST_FULL)
                break;
            /* send(), not write(): MSG_NOSIGNAL spares us SIGPIPE here. */
            n = send(d->dst, d->buf + d->buf_off, len, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN)
                    return fail(r, DST_SIDE(i), errno);
                d->flags |= FP_DIR_DST_FULL;
                break;
            }
            deliver(d, (size_t)n, 0);
            if ((size_t)n < len) {
                d->buf_off += (size_t)n;
                d->flags |= FP_DIR_DST_FULL;
                break;
            }
            d->buf_off = d->buf_len = 0;
        }
        /* Buffer empty: whatever is still in flight is in the pipe. */
        if (d->in_flight) {
            size_t want = d->in_flight < r->chunk ? d->in_flight : r->chunk;

            if (!d->pipe_cap)
                return fail(r, -1, EIO); /* accounting bug: bytes nowhere */
            n = read(d->pipe_r, d->buf, want);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                return fail(r, -1, n < 0 ? errno : EIO);
            d->buf_len = (size_t)n;
            continue;
        }
        if (d->pipe_cap)
            close_pipe(r, d); /* drained, and never used again in this mode */
        if (!try_read || drained || (d->flags & FP_DIR_EOF) || !budget)
            break;
        n = recv(d->src, d->buf, r->chunk, MSG_DONTWAIT);
        if (n > 0) {
            budget -= (size_t)n < budget ? (size_t)n : budget;
            d->in_flight = d->buf_len = (size_t)n;
            if ((size_t)n < r->chunk && !drain)
                drained = 1;
        } else if (n == 0) {
            d->flags |= FP_DIR_EOF;
        } else if (errno == EAGAIN) {
            drained = 1;
        } else if (errno != EINTR) {
            return fail(r, SRC_SIDE(i), errno);
        }
    }
    note_more(d, try_read, drained, budget, step);
    return propagate_eof(r, i);
}

static int to_fallback(fp_relay *r, int i, int try_read, int drain)
{
    r->dir[i].flags |= FP_DIR_FALLBACK;
    r->dir[i].flags &= ~(unsigned)FP_DIR_STALL;
    return pump_copy(r, i, try_read, drain);
}

static int pump_splice(fp_relay *r, int i, int try_read, int drain)
{
    fp_relay_dir *d = &r->dir[i];
    size_t budget = PUMP_BUDGET;
    int drained = 0, step;

    for (step = 0; step < PUMP_STEPS; step++) {
        size_t len = d->in_flight, room;
        ssize_t n;

        if (len && !(d->flags & FP_DIR_DST_FULL)) {
            if (d->flags & FP_DIR_TEST_NOSPLICE) {
                n = -1;
                errno = EINVAL;
            } else {
                n = splice(d->pipe_r, NULL, d->dst, NULL, len, SPLICE_FLAGS);
            }
            if (n > 0) {
                deliver(d, (size_t)n, 1);
                d->flags &= ~(unsigned)FP_DIR_STALL; /* pipe slots were freed */
                if ((size_t)n < len)
                    d->flags |= FP_DIR_DST_FULL;
            } else if (n == 0) {
                return fail(r, -1, EIO); /* a pipe we hold bytes in cannot be at EOF */
            } else if (errno == EAGAIN) {
                d->flags |= FP_DIR_DST_FULL;
            } else if (errno == EINTR) {
                continue;
            } else if (splice_unsupported(errno)) {
                return to_fallback(r, i, try_read, drain);
            } else {
                return fail(r, DST_SIDE(i), errno);
            }
        }
        if (!try_read || drained || !budget || (d->flags & (FP_DIR_EOF | FP_DIR_STALL)))
            break;
        room = d->pipe_cap - d->in_flight;
        if (!room)
            break;
        if (d->flags & FP_DIR_TEST_NOSPLICE) {
            n = -1;
            errno = EINVAL;
        } else {
            n = splice(d->src, NULL, d->pipe_w, NULL, room, SPLICE_FLAGS);
        }
        if (n > 0) {
            budget -= (size_t)n < budget ? (size_t)n : budget;
            d->in_flight += (size_t)n;
            if ((size_t)n < room && !drain)
                drained = 1;
        } else if (n == 0) {
            d->flags |= FP_DIR_EOF;
        } else if (errno == EAGAIN) {
            drained = 1;
        } else if (errno == EINTR) {
            continue;
        } else if (splice_unsupported(errno)) {
            return to_fallback(r, i, try_read, drain);
        } else {
            return fail(r, SRC_SIDE(i), errno);
        }
    }
    /* A short or EAGAIN read while the pipe still holds bytes is ambiguous:
     * src may be empty, or the pipe out of slots with in_flight < pipe_cap.
     * Asking for src readability then could spin the loop (src readable,
     * splice EAGAIN, again), so wait for dst: it has bytes pending, so its
     * writability is bound to come, and the write clears the flag. */
    if (drained && d->in_flight)
        d->flags |= FP_DIR_STALL;
    note_more(d, try_read, drained, budget, step);
    return propagate_eof(r, i);
}

static int pump_dir(fp_relay *r, int i, int src_ready, int dst_ready, int drain)
{
    fp_relay_dir *d = &r->dir[i];
    int try_read = !(d->flags & FP_DIR_EOF) && (src_ready || read_suppressed(d));

    if (dst_ready)
        d->flags &= ~(unsigned)FP_DIR_DST_FULL;
    if (d->flags & FP_DIR_FALLBACK)
        return pump_copy(r, i, try_read, drain);
    if (!d->pipe_cap) {
        if (!try_read)
            return 0;
        /* Out of fds or pipe memory: copying through user space beats
         * dropping the connection. */
        if (open_pipe(r, d) < 0)
            return to_fallback(r, i, try_read, drain);
    }
    return pump_splice(r, i, try_read, drain);
}

static int wants(const fp_relay *r)
{
    int i, w = 0;

    for (i = 0; i < 2; i++) {
        const fp_relay_dir *d = &r->dir[i];

        if (d->flags & FP_DIR_SHUT)
            continue;
        if (!(d->flags & FP_DIR_EOF) && !read_suppressed(d))
            w |= want_read[i];
        if (d->in_flight)
            w |= want_write[i];
    }
    return w;
}

int fp_relay_carry(const fp_relay *r)
{
    int i, w = 0;

    for (i = 0; i < 2; i++) {
        const fp_relay_dir *d = &r->dir[i];

        if (d->flags & FP_DIR_SHUT)
            continue;
        if (d->in_flight && !(d->flags & FP_DIR_DST_FULL))
            w |= want_write[i];
        if ((d->flags & FP_DIR_MORE) && !(d->flags & FP_DIR_EOF) && !read_suppressed(d))
            w |= want_read[i];
    }
    return w;
}

void fp_relay_init(fp_relay *r, int a, int b, size_t chunk)
{
    int i;

    memset(r, 0, sizeof(*r));
    r->chunk = clamp_chunk(chunk);
    r->reset_side = -1;
    r->dir[0].src = a;
    r->dir[0].dst = b;
    r->dir[1].src = b;
    r->dir[1].dst = a;
    for (i = 0; i < 2; i++)
        r->dir[i].pipe_r = r->dir[i].pipe_w = -1;
}

int fp_relay_start(fp_relay *r)
{
    return FP_READ_A | FP_READ_B;
}

int fp_relay_pump(fp_relay *r, int events)
{
    uint64_t delivered = 0, held = 0;
    int i;

    for (i = 0; i < 2; i++) {
        delivered += r->dir[i].spliced + r->dir[i].copied;
        held += r->dir[i].in_flight;
    }
    for (i = 0; i < 2; i++) {
        fp_relay_dir *d = &r->dir[i];
        int src_ready = events & want_read[i], dst_ready = events & want_write[i];

        if ((d->flags & FP_DIR_SHUT) || !(src_ready || dst_ready))
            continue;
        if (pump_dir(r, i, src_ready, dst_ready, events & FP_DRAIN) < 0)
            return FP_RELAY_RESET;
    }
    /* Bytes were read iff in_flight changed or more was delivered. */
    for (i = 0; i < 2; i++) {
        delivered -= r->dir[i].spliced + r->dir[i].copied;
        held -= r->dir[i].in_flight;
    }
    if (delivered || held)
        r->activity++;
    if (r->dir[0].flags & r->dir[1].flags & FP_DIR_SHUT)
        return FP_RELAY_DONE;
    /* Park the empty pipe of an idle direction (no syscall either way); the
     * next read takes one back. Fallback directions closed theirs already. */
    if (r->pool)
        for (i = 0; i < 2; i++)
            if (!(r->dir[i].flags & FP_DIR_FALLBACK))
                pool_give(r, &r->dir[i]);
    return wants(r);
}

void fp_relay_free(fp_relay *r)
{
    release(r, &r->dir[0]);
    release(r, &r->dir[1]);
}

int fp_pipe_pool_init(fp_pipe_pool *p, size_t chunk, unsigned max)
{
    memset(p, 0, sizeof(*p));
    p->chunk = clamp_chunk(chunk);
    p->max = max;
    if (max) {
        p->fds = calloc((size_t)max * 2, sizeof(int));
        if (!p->fds)
            return -ENOMEM;
    }
    return 0;
}

void fp_pipe_pool_destroy(fp_pipe_pool *p)
{
    while (p->fds && p->n) {
        p->n--;
        close(p->fds[2 * p->n]);
        close(p->fds[2 * p->n + 1]);
    }
    free(p->fds);
    p->fds = NULL;
    p->n = p->max = 0;
}
