/* engine.c - one edge-triggered epoll set driving every relay of a worker.
 *
 * A run:
 *
 *     work = the pending list of the previous run
 *     epoll_wait(timeout 0, up to BATCH): for each event, OR its FP_* bits
 *         into the relay's eng_events and append the relay to work (once);
 *         a connecting relay only remembers A's bits, and B's event settles
 *         the connect (SO_ERROR)
 *     for each relay in work: one fp_relay_pump(eng_events | FP_DRAIN);
 *         DONE/RESET -> close/abort both sockets, release the pipes, queue
 *         it as finished; else fp_relay_carry() -> the pending list of the
 *         next run. Past the run's budget (RUN_BYTES, RUN_PUMPS) the rest of
 *         work goes, unpumped, to the head of the pending list
 *     hand out the oldest finished relays
 *
 * Registration keys: epoll_event.data carries (generation, slot, side), not a
 * pointer. A relay's slot gets a new generation when the relay ends, so an
 * event collected in the same batch after the relay ended, or one from a
 * socket that outlived close() through another descriptor, is recognised as
 * stale and dropped instead of reaching freed memory.
 */
#define _GNU_SOURCE
#include "engine.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
/* A run stops pumping once it moved this many bytes or made this many pumps;
 * the relays it did not reach keep their event bits and go first on the
 * pending list (*more). A run then costs a few milliseconds at most, and the
 * worker's event loop (the HTTP path, timers) gets its turn between runs. */
#define RUN_BYTES ((uint64_t)8 << 20)
#define RUN_PUMPS 512
/* Re-pumps from the pending list without progress tolerated before a relay
 * is left to wait for an edge. Never reached by a correct pump: a carried
 * bit always makes progress (bytes move, or a read proves src drained, or a
 * write finds dst full), so this only turns a bug into a stall (which the
 * idle timeout ends) instead of a busy loop. */
#define SPIN_LIMIT 4
#define NO_SLOT UINT32_MAX
#define SLOT_MAX 0x7fffffffu

typedef struct slot {
    fp_relay *r;             /* NULL when free */
    uint32_t gen;            /* bumped when freed */
    uint32_t next_free;
} slot;

typedef struct rlist {
    fp_relay *head, *tail;
    unsigned n;
} rlist;

struct fp_engine {
    int epfd;
    int sigpipe_guard;       /* SIGPIPE was not ignored at fp_engine_new() */
    fp_pipe_pool pool;
    slot *slots;
    uint32_t nslots, free_head;
    unsigned count;
    rlist pending;           /* pumped by the next run */
    rlist finished;          /* ended, not yet reported */
    fp_engine_stats st;
};

/* ---- lists (a relay is on at most one: pending/work or finished) ---------- */

/* Moves all of `front` before the relays of *l. */
static void list_prepend_all(rlist *l, rlist *front)
{
    if (!front->head)
        return;
    if (l->head) {
        front->tail->eng_next = l->head;
        l->head->eng_prev = front->tail;
        front->tail = l->tail;
    }
    front->n += l->n;
    *l = *front;
    memset(front, 0, sizeof(*front));
}

static void list_append(rlist *l, fp_relay *r)
{
    r->eng_next = NULL;
    r->eng_prev = l->tail;
    if (l->tail)
        l->tail->eng_next = r;
    else
        l->head = r;
    l->tail = r;
    l->n++;
}

static void list_unlink(rlist *l, fp_relay *r)
{
    if (r->eng_prev)
        r->eng_prev->eng_next = r->eng_next;
    else
        l->head = r->eng_next;
    if (r->eng_next)
        r->eng_next->eng_prev = r->eng_prev;
    else
        l->tail = r->eng_prev;
    r->eng_prev = r->eng_next = NULL;
    l->n--;
}

static fp_relay *list_pop(rlist *l)
{
    fp_relay *r = l->head;

    if (r)
        list_unlink(l, r);
    return r;
}

/* ---- registration slots --------------------------------------------------- */

static int slot_alloc(fp_engine *e, fp_relay *r)
{
    uint32_t s;

    if (e->free_head == NO_SLOT) {
        uint32_t n = e->nslots ? e->nslots * 2 : 64, k;
        slot *t;

        if (n > SLOT_MAX || n < e->nslots)
            return -ENOMEM;
        t = realloc(e->slots, (size_t)n * sizeof(*t));
        if (!t)
            return -ENOMEM;
        for (k = e->nslots; k < n; k++) {
            t[k].r = NULL;
            t[k].gen = 0;
            t[k].next_free = k + 1 < n ? k + 1 : NO_SLOT;
        }
        e->slots = t;
        e->free_head = e->nslots;
        e->nslots = n;
    }
    s = e->free_head;
    e->free_head = e->slots[s].next_free;
    e->slots[s].r = r;
    r->eng_slot = s;
    return 0;
}

static void slot_free(fp_engine *e, fp_relay *r)
{
    slot *t = &e->slots[r->eng_slot];

    t->r = NULL;
    t->gen++;
    t->next_free = e->free_head;
    e->free_head = r->eng_slot;
}

static uint64_t slot_key(const fp_engine *e, uint32_t s, int side)
{
    return ((uint64_t)e->slots[s].gen << 32) | ((uint64_t)s << 1) | (uint64_t)side;
}

/* The relay an event belongs to, or NULL for a stale event. */
static fp_relay *slot_lookup(const fp_engine *e, uint64_t key)
{
    uint32_t s = (uint32_t)(key >> 1) & SLOT_MAX, gen = (uint32_t)(key >> 32);

    if (s >= e->nslots || e->slots[s].gen != gen)
        return NULL;
    return e->slots[s].r;
}

/* ---- endings ------------------------------------------------------------------ */

static void sock_abort(int fd)
{
    struct linger lg = { 1, 0 };

    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* Unregisters r (its slot, the pending list), releases its pipes and closes
 * its sockets as `how` says. Leaves r->eng_state to the caller. */
static void end_relay(fp_engine *e, fp_relay *r, int how)
{
    int a = r->dir[0].src, b = r->dir[0].dst;

    if (r->eng_state & FP_ENG_QUEUED)
        list_unlink(&e->pending, r);
    r->eng_state &= ~(unsigned)(FP_ENG_QUEUED | FP_ENG_EDGE);
    slot_free(e, r);
    fp_relay_free(r); /* empty pipes back to the pool, the others closed */
    r->pool = NULL;   /* the relay may outlive the engine */
    r->eng_events = 0;
    r->eng_how = how;
    /* close() removes each socket from the epoll set. */
    switch (how) {
    case FP_END_DONE:
        close(a);
        close(b);
        break;
    case FP_END_CONNECT_FAIL:
    case FP_END_CONNECT_TIMEOUT:
        /* The client learns of the failure as a reset, as with Envoy's
         * tcp_proxy; B never connected, there is nothing to reset. */
        sock_abort(a);
        close(b);
        break;
    default:
        sock_abort(a);
        sock_abort(b);
        break;
    }
    e->st.finished[how]++;
}

/* An ending found by a run: queued, reported by this or a later run. */
static void end_queued(fp_engine *e, fp_relay *r, int how)
{
    end_relay(e, r, how);
    r->eng_state = FP_ENG_FINISHED;
    list_append(&e->finished, r);
}

/* ---- events ------------------------------------------------------------------- */

static int event_bits(uint32_t ev, int side)
{
    int rd = side ? FP_READ_B : FP_READ_A, wr = side ? FP_WRITE_B : FP_WRITE_A, bits = 0;

    if (ev & (EPOLLIN | EPOLLRDHUP))
        bits |= rd;
    if (ev & EPOLLOUT)
        bits |= wr;
    /* An error or hangup: let both halves find it out (a write towards a
     * reset dst fails; a read returns the error or EOF). */
    if (ev & (EPOLLERR | EPOLLHUP))
        bits |= rd | wr;
    return bits;
}

static int so_error(int fd)
{
    int err = 0;
    socklen_t len = sizeof(err);

    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno ? errno : EIO;
    return err;
}

/* One collected event. `work` is this run's list of relays to pump. */
static void on_event(fp_engine *e, rlist *work, const struct epoll_event *ev)
{
    fp_relay *r = slot_lookup(e, ev->data.u64);
    int side = (int)(ev->data.u64 & 1), bits;

    if (!r || !(r->eng_state & FP_ENG_REGISTERED))
        return;
    bits = event_bits(ev->events, side);
    if (r->eng_state & FP_ENG_CONNECTING) {
        int err;

        /* Until B is connected, A's readiness is only remembered: the pump
         * would move A's bytes towards a socket that cannot take them. */
        if (side == 0 || !(ev->events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
            r->eng_events |= bits;
            return;
        }
        /* A failed connect (RST: ECONNREFUSED, timeout) sets sk_err, which
         * tcp_poll() always reports as EPOLLERR (with EPOLLHUP: the socket is
         * closed); an event from a socket past SYN_SENT without either means
         * the connect succeeded. getsockopt(SO_ERROR) only when in doubt. */
        err = (ev->events & (EPOLLERR | EPOLLHUP)) ? so_error(r->dir[0].dst) : 0;
        if (err) {
            r->error = err;
            r->reset_side = 1;
            e->st.connects_failed++;
            end_queued(e, r, FP_END_CONNECT_FAIL);
            return;
        }
        r->eng_state &= ~(unsigned)FP_ENG_CONNECTING;
        e->st.connects_ok++;
        /* Serve what A announced meanwhile, and B. */
    }
    r->eng_events |= bits;
    r->eng_state |= FP_ENG_EDGE;
    if (ev->events & EPOLLERR)
        r->eng_state |= side ? FP_ENG_ERR_B : FP_ENG_ERR_A;
    if (!(r->eng_state & FP_ENG_QUEUED)) {
        r->eng_state |= FP_ENG_QUEUED;
        list_append(work, r);
    }
}

/* ---- pumping ------------------------------------------------------------------- */

typedef struct snap {
    uint32_t activity;
    unsigned flags[2];
    size_t in_flight[2];
} snap;

static void take_snap(const fp_relay *r, snap *s)
{
    int i;

    s->activity = r->activity;
    for (i = 0; i < 2; i++) {
        s->flags[i] = r->dir[i].flags;
        s->in_flight[i] = r->dir[i].in_flight;
    }
}

static int same_snap(const fp_relay *r, const snap *s)
{
    int i;

    if (s->activity != r->activity)
        return 0;
    for (i = 0; i < 2; i++)
        if (s->flags[i] != r->dir[i].flags || s->in_flight[i] != r->dir[i].in_flight)
            return 0;
    return 1;
}

/* EPOLLERR arrived on a side, and the pump did not run into the error (the
 * side's read was suppressed, or its direction is over): is the socket dead?
 * For TCP sk_err only holds hard errors (RST, timeouts), so yes if set. */
static int side_failed(fp_relay *r, unsigned errbits)
{
    int side, err;

    for (side = 0; side < 2; side++) {
        if (!(errbits & (side ? FP_ENG_ERR_B : FP_ENG_ERR_A)))
            continue;
        err = so_error(side ? r->dir[0].dst : r->dir[0].src);
        if (err) {
            r->error = err;
            r->reset_side = side;
            return 1;
        }
    }
    return 0;
}

static uint64_t delivered(const fp_relay *r)
{
    return r->dir[0].spliced + r->dir[0].copied + r->dir[1].spliced + r->dir[1].copied;
}

/* Pumps r once; returns the bytes it delivered. */
static uint64_t pump_one(fp_engine *e, fp_relay *r)
{
    uint64_t d0 = delivered(r);
    int edge = r->eng_state & FP_ENG_EDGE, ev = r->eng_events | FP_DRAIN, res, carry;
    unsigned errbits = r->eng_state & (FP_ENG_ERR_A | FP_ENG_ERR_B);
    snap before;

    r->eng_events = 0;
    r->eng_state &= ~(unsigned)(FP_ENG_EDGE | FP_ENG_ERR_A | FP_ENG_ERR_B);
    take_snap(r, &before);
    res = fp_relay_pump(r, ev);
    r->eng_pumps++;
    e->st.pumps++;
    d0 = delivered(r) - d0;
    if (res & FP_RELAY_DONE) {
        end_queued(e, r, FP_END_DONE);
        return d0;
    }
    if ((res & FP_RELAY_RESET) || (errbits && side_failed(r, errbits))) {
        end_queued(e, r, FP_END_RESET);
        return d0;
    }
    carry = fp_relay_carry(r);
    if (!carry) {
        r->eng_idle = 0;
        return d0;
    }
    if (!edge && same_snap(r, &before)) {
        if (++r->eng_idle > SPIN_LIMIT) {
            e->st.spin_breaks++;
            r->eng_idle = 0;
            return d0;
        }
    } else {
        r->eng_idle = 0;
    }
    r->eng_events = carry;
    r->eng_state |= FP_ENG_QUEUED;
    list_append(&e->pending, r);
    e->st.pended++;
    return d0;
}

/* ---- API ------------------------------------------------------------------------ */

fp_engine *fp_engine_new(size_t chunk, unsigned pool_max)
{
    fp_engine *e = calloc(1, sizeof(*e));
    struct sigaction sa;
    int err;

    if (!e)
        return NULL;
    e->free_head = NO_SLOT;
    err = fp_pipe_pool_init(&e->pool, chunk, pool_max);
    if (err < 0) {
        free(e);
        errno = -err;
        return NULL;
    }
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epfd < 0) {
        err = errno;
        fp_pipe_pool_destroy(&e->pool);
        free(e);
        errno = err;
        return NULL;
    }
    memset(&sa, 0, sizeof(sa));
    if (sigaction(SIGPIPE, NULL, &sa) == 0)
        e->sigpipe_guard = (sa.sa_flags & SA_SIGINFO) || sa.sa_handler != SIG_IGN;
    else
        e->sigpipe_guard = 1;
    return e;
}

int fp_engine_fd(const fp_engine *e)
{
    return e->epfd;
}

int fp_engine_add(fp_engine *e, fp_relay *r, int connecting, void *user)
{
    struct epoll_event ev;
    int a = r->dir[0].src, b = r->dir[0].dst, err;

    if (r->eng_state & (FP_ENG_REGISTERED | FP_ENG_FINISHED))
        return -EBUSY;
    err = slot_alloc(e, r);
    if (err < 0)
        return err;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = slot_key(e, r->eng_slot, 0);
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, a, &ev) < 0) {
        err = -errno;
        slot_free(e, r);
        return err;
    }
    ev.data.u64 = slot_key(e, r->eng_slot, 1);
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, b, &ev) < 0) {
        err = -errno;
        epoll_ctl(e->epfd, EPOLL_CTL_DEL, a, &ev);
        slot_free(e, r);
        return err;
    }
    r->user = user;
    r->pool = &e->pool;
    r->fin_by_close = 1;
    r->eng_state = FP_ENG_REGISTERED | (connecting ? FP_ENG_CONNECTING : 0);
    r->eng_events = 0;
    r->eng_how = 0;
    r->eng_pumps = r->eng_idle = 0;
    r->eng_prev = r->eng_next = NULL;
    e->count++;
    return 0;
}

int fp_engine_run(fp_engine *e, fp_finished *out, int max, int *more)
{
    struct epoll_event evs[BATCH];
    rlist work = e->pending;
    sigset_t pipeset, oldset;
    int n, k, rc = 0, guard = 0, pumps = 0;
    uint64_t moved = 0;
    fp_relay *r;

    e->st.runs++;
    if (e->sigpipe_guard) {
        sigemptyset(&pipeset);
        sigaddset(&pipeset, SIGPIPE);
        if (pthread_sigmask(SIG_BLOCK, &pipeset, &oldset) == 0)
            guard = !sigismember(&oldset, SIGPIPE);
    }
    memset(&e->pending, 0, sizeof(e->pending));
    n = epoll_wait(e->epfd, evs, BATCH, 0);
    if (n < 0) {
        if (errno != EINTR) {
            rc = -errno;
            e->pending = work; /* nothing was pumped; keep it for the next call */
            goto out;
        }
        n = 0;
    }
    e->st.events += (uint64_t)n;
    for (k = 0; k < n; k++)
        on_event(e, &work, &evs[k]);
    while (moved < RUN_BYTES && pumps < RUN_PUMPS && (r = list_pop(&work))) {
        r->eng_state &= ~(unsigned)FP_ENG_QUEUED;
        moved += pump_one(e, r);
        pumps++;
    }
    /* Over budget: the rest keep their bits (and FP_ENG_QUEUED) and are
     * served first by the next run. */
    e->st.deferred += work.n;
    list_prepend_all(&e->pending, &work);
    while (rc < max && (r = list_pop(&e->finished))) {
        r->eng_state = 0;
        out[rc].relay = r;
        out[rc].how = r->eng_how;
        rc++;
        e->count--;
    }
out:
    if (guard) {
        /* Swallow a SIGPIPE a splice() raised; it stayed pending while
         * blocked. A thread-directed and a process-directed one may both
         * be pending: two tries at most. */
        struct timespec zero = { 0, 0 };

        for (k = 0; k < 2 && sigtimedwait(&pipeset, NULL, &zero) == SIGPIPE; k++)
            ;
        pthread_sigmask(SIG_SETMASK, &oldset, NULL);
    }
    *more = e->pending.head || e->finished.head;
    if (*more)
        e->st.more++;
    return rc;
}

void fp_engine_finish(fp_engine *e, fp_relay *r)
{
    if (r->eng_state & FP_ENG_FINISHED) {
        /* Ended by a run, sockets already closed: only forget it. */
        list_unlink(&e->finished, r);
        r->eng_state = 0;
        e->count--;
        return;
    }
    if (!(r->eng_state & FP_ENG_REGISTERED))
        return;
    end_relay(e, r, (r->eng_state & FP_ENG_CONNECTING) ? FP_END_CONNECT_TIMEOUT : FP_END_ABORTED);
    r->eng_state = 0;
    e->count--;
}

unsigned fp_engine_count(const fp_engine *e)
{
    return e->count;
}

void fp_engine_get_stats(const fp_engine *e, fp_engine_stats *st)
{
    *st = e->st;
    st->pipes_created = e->pool.created;
    st->pipes_reused = e->pool.reused;
    st->pipes_returned = e->pool.returned;
    st->pipes_closed = e->pool.closed;
    st->pool_size = e->pool.n;
    st->pending = e->pending.n;
    st->queued = e->finished.n;
    st->registered = e->count;
    st->sigpipe_guard = e->sigpipe_guard;
}

void fp_engine_free(fp_engine *e)
{
    uint32_t s;
    fp_relay *r;

    if (!e)
        return;
    for (s = 0; s < e->nslots; s++) {
        r = e->slots[s].r;
        if (r) {
            r->pool = NULL;
            r->eng_state = 0;
            r->eng_prev = r->eng_next = NULL;
        }
    }
    while ((r = list_pop(&e->finished)))
        r->eng_state = 0;
    close(e->epfd);
    fp_pipe_pool_destroy(&e->pool);
    free(e->slots);
    free(e);
}
