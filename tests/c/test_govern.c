/* test_govern.c - csrc/govern.c under ASan/UBSan.
 *
 * A table of cases; each prints "<name> ok" or "<name> FAIL" (with the failed
 * check above it), then "N passed, M failed"; the exit status is nonzero if
 * any case failed. Single-process cases pin every decision (breakers,
 * ejection, decay, buckets, retry tables); the forked cases run 4 processes
 * on one MAP_SHARED segment, as the workers do, and check the invariants
 * that only concurrency can break: a breaker never admits more than its
 * threshold, a bucket never hands out more tokens than it holds, an
 * endpoint is ejected once and the cluster's count stays exact.
 * The real-segment case names its segment "/fastproxy-test-<pid>-govern"
 * and removes it.
 *
 * Build alone:
 *   gcc -std=gnu99 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
 *       -fsanitize=address,undefined -Icsrc -o build/ctest/test_govern \
 *       tests/c/test_govern.c csrc/govern.c csrc/shmtable.c -lrt
 */
#include "testkit.h"

#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <sys/wait.h>

#include "govern.h"
#include "shmtable.h"

#define NPROC 4
#define CHILD_SECONDS 60.0   /* hard deadline for a forked child */

/* ---- harness ----------------------------------------------------------- */

/* A zero-filled MAP_SHARED mapping holding an initialised segment: what the
 * manager creates, shared with children the way workers share it. */
struct seg {
    void *base;
    uint64_t size;
};

static int seg_map(struct seg *s, uint32_t nc, uint32_t ne, uint32_t nb)
{
    s->size = gv_segment_bytes(nc, ne, nb);
    s->base = mmap(NULL, (size_t)s->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s->base == MAP_FAILED) {
        s->base = NULL;
        return -1;
    }
    gv_segment_init(s->base, nc, ne, nb);
    return 0;
}

static void seg_unmap(struct seg *s)
{
    if (s->base)
        munmap(s->base, (size_t)s->size);
    s->base = NULL;
}

/* No breaker, no outlier detection. */
static gv_cluster_cfg cfg_open(void)
{
    gv_cluster_cfg cfg;

    memset(&cfg, 0, sizeof(cfg));
    cfg.max_connections = cfg.max_pending_requests = cfg.max_requests = cfg.max_retries = GV_UNLIMITED;
    return cfg;
}

/* Outlier detection on: thresholds t5 / tgw, base/max ejection, pct of nhosts. */
static gv_cluster_cfg cfg_od(uint32_t t5, uint32_t tgw, uint32_t base, uint32_t max, uint32_t pct,
                             uint32_t nhosts)
{
    gv_cluster_cfg cfg = cfg_open();

    cfg.od_enabled = 1;
    cfg.consecutive_5xx = t5;
    cfg.consecutive_gateway_failure = tgw;
    cfg.base_ejection_ms = base;
    cfg.max_ejection_ms = max;
    cfg.max_ejection_percent = pct;
    cfg.nhosts = nhosts;
    return cfg;
}

/* Reports `outcome` n times; returns how many of them ejected. */
static int report_n(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, int outcome, int n,
                    uint64_t now)
{
    int k, ejected = 0;

    for (k = 0; k < n; k++)
        ejected += gv_outlier_report(c, ep, cfg, outcome, now);
    return ejected;
}

static uint64_t ld64(_Atomic uint64_t *p)
{
    return __atomic_load_n((uint64_t *)p, __ATOMIC_RELAXED);
}

static int64_t ldi64(_Atomic int64_t *p)
{
    return __atomic_load_n((int64_t *)p, __ATOMIC_RELAXED);
}

static uint32_t ld32(_Atomic uint32_t *p)
{
    return __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED);
}

static uint64_t xorshift64(uint64_t *s)
{
    uint64_t x = *s;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

/* Forks NPROC children running body(k, arg), each exiting with its return
 * value, and reaps them (SIGKILL past the deadline). 0 when every child
 * exited with 0. */
static int run_children(int (*body)(int k, void *arg), void *arg)
{
    pid_t pids[NPROC];
    int k, status, bad = 0;
    double deadline;

    fflush(NULL);
    for (k = 0; k < NPROC; k++) {
        pids[k] = fork();
        if (pids[k] < 0) {
            perror("fork");
            bad = 1;
            break;
        }
        if (pids[k] == 0)
            _exit(body(k, arg));
    }
    deadline = tk_now() + CHILD_SECONDS;
    for (k--; k >= 0; k--) {
        while (waitpid(pids[k], &status, WNOHANG) == 0) {
            if (tk_now() > deadline) {
                fprintf(stderr, "  child %d hung: killed\n", k);
                kill(pids[k], SIGKILL);
                waitpid(pids[k], &status, 0);
                bad = 1;
                break;
            }
            usleep(1000);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "  child %d ended with status %#x\n", k, status);
            bad = 1;
        }
    }
    return bad;
}

/* Waits (spinning) until `count` reaches `want`: a barrier for the children. */
static int spin_until(volatile int64_t *count, int64_t want)
{
    double deadline = tk_now() + CHILD_SECONDS;

    while (__atomic_load_n(count, __ATOMIC_ACQUIRE) < want) {
        if (tk_now() > deadline)
            return -1;
    }
    return 0;
}

static void atomic_max(volatile int64_t *m, int64_t v)
{
    int64_t cur = __atomic_load_n(m, __ATOMIC_RELAXED);

    while (v > cur && !__atomic_compare_exchange_n(m, &cur, v, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
        ;
}

/* ---- the segment ----------------------------------------------------------- */

static int test_layout(void)
{
    struct seg s;
    uint32_t i;

    CHECK_EQ(gv_segment_bytes(0, 0, 0), 4096);
    CHECK_EQ(gv_segment_bytes(2, 3, 4), 4096 + 2 * 128 + 3 * 64 + 4 * 64);
    CHECK_EQ(gv_segment_bytes(UINT32_MAX, UINT32_MAX, UINT32_MAX),
             4096 + (uint64_t)UINT32_MAX * 256);
    CHECK_EQ(seg_map(&s, 2, 3, 4), 0);
    for (i = 0; i < 2; i++) {
        gv_cluster *c = gv_cluster_at(s.base, i);
        CHECK_EQ((uintptr_t)c - (uintptr_t)s.base, 4096 + i * 128);
        CHECK((uintptr_t)c % 64 == 0);
    }
    for (i = 0; i < 3; i++) {
        gv_endpoint *ep = gv_endpoint_at(s.base, i);
        CHECK_EQ((uintptr_t)ep - (uintptr_t)s.base, 4096 + 2 * 128 + i * 64);
        CHECK((uintptr_t)ep % 64 == 0);
    }
    for (i = 0; i < 4; i++) {
        gv_bucket *b = gv_bucket_at(s.base, i);
        CHECK_EQ((uintptr_t)b - (uintptr_t)s.base, 4096 + 2 * 128 + 3 * 64 + i * 64);
        CHECK((uintptr_t)b % 64 == 0);
        CHECK((uintptr_t)b + 64 <= (uintptr_t)s.base + s.size);
    }
    CHECK(gv_cluster_at(s.base, 2) == NULL);
    CHECK(gv_endpoint_at(s.base, 3) == NULL);
    CHECK(gv_bucket_at(s.base, 4) == NULL);
    CHECK(gv_bucket_at(s.base, UINT32_MAX) == NULL);
    CHECK(gv_cluster_at(NULL, 0) == NULL);
    CHECK(gv_endpoint_at(NULL, 0) == NULL);
    CHECK(gv_bucket_at(NULL, 0) == NULL);
    seg_unmap(&s);

    /* a segment without endpoints or buckets: nothing to hand out */
    CHECK_EQ(seg_map(&s, 1, 0, 0), 0);
    CHECK(gv_cluster_at(s.base, 0) != NULL);
    CHECK(gv_endpoint_at(s.base, 0) == NULL);
    CHECK(gv_bucket_at(s.base, 0) == NULL);
    seg_unmap(&s);
    return 0;
}

static int test_check(void)
{
    struct seg s;
    gv_hdr *h;
    uint64_t size = gv_segment_bytes(3, 5, 7);
    void *raw = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

    CHECK(raw != MAP_FAILED);
    CHECK_EQ(gv_segment_check(raw, size), -EINVAL);        /* zero-filled: no magic yet */
    CHECK_EQ(gv_segment_check(NULL, size), -EINVAL);
    munmap(raw, (size_t)size);

    CHECK_EQ(seg_map(&s, 3, 5, 7), 0);
    h = s.base;
    CHECK_EQ(h->magic, GV_MAGIC);
    CHECK_EQ(h->layout, GV_LAYOUT);
    CHECK_EQ(h->ncluster, 3);
    CHECK_EQ(h->nendpoint, 5);
    CHECK_EQ(h->nbucket, 7);
    CHECK_EQ(gv_segment_check(s.base, s.size), 0);
    CHECK_EQ(gv_segment_check(s.base, s.size + 4096), 0);  /* a bigger mapping is fine */
    CHECK_EQ(gv_segment_check(s.base, s.size - 1), -ERANGE);
    CHECK_EQ(gv_segment_check(s.base, 4096), -ERANGE);
    CHECK_EQ(gv_segment_check(s.base, 8), -ERANGE);
    h->layout = GV_LAYOUT + 1;
    CHECK_EQ(gv_segment_check(s.base, s.size), -EINVAL);
    h->layout = GV_LAYOUT;
    h->magic = FP_TABLE_MAGIC;
    CHECK_EQ(gv_segment_check(s.base, s.size), -EINVAL);
    h->magic = GV_MAGIC;
    h->nbucket = 8;                                        /* the header claims more than is mapped */
    CHECK_EQ(gv_segment_check(s.base, s.size), -ERANGE);
    seg_unmap(&s);
    return 0;
}

static int all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    size_t i;

    for (i = 0; i < n; i++)
        if (b[i])
            return 0;
    return 1;
}

static int test_resets(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;
    gv_bucket *b;

    CHECK_EQ(seg_map(&s, 1, 1, 1), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);
    b = gv_bucket_at(s.base, 0);
    memset((void *)c, 0xA5, sizeof(*c));
    memset((void *)ep, 0x5A, sizeof(*ep));
    memset((void *)b, 0x77, sizeof(*b));
    gv_cluster_reset(c);
    gv_endpoint_reset(ep);
    gv_bucket_reset(b);
    CHECK(all_zero((const void *)c, sizeof(*c)));
    CHECK(all_zero((const void *)ep, offsetof(gv_endpoint, pad_) + sizeof(ep->pad_)));
    CHECK(all_zero((const void *)b, 24));                /* the fields; the rest is padding */
    seg_unmap(&s);
    return 0;
}

static int test_now_ms(void)
{
    uint64_t a = gv_now_ms(), b;
    double t = tk_now();

    tk_sleep_ms(20);
    b = gv_now_ms();
    CHECK(b >= a + 19);
    CHECK(b <= a + 2000);
    CHECK((double)a / 1000.0 <= t + 0.01 && (double)a / 1000.0 >= t - 0.01); /* CLOCK_MONOTONIC */
    return 0;
}

/* A real POSIX segment: created and initialised here, opened by name and
 * written by a child, read back here. */
static int test_real_segment(void)
{
    char name[96];
    void *base = NULL, *other = NULL;
    size_t size = (size_t)gv_segment_bytes(2, 4, 2), osize = 0;
    pid_t pid;
    int status;
    gv_cluster_cfg cfg = cfg_open();

    snprintf(name, sizeof(name), "/fastproxy-test-%ld-govern", (long)getpid());
    fp_shm_unlink(name);
    CHECK_EQ(fp_shm_create(name, size, &base), 0);
    gv_segment_init(base, 2, 4, 2);
    CHECK_EQ(fp_shm_open(name, 1, &other, &osize), 0);
    CHECK_EQ(osize, size);
    CHECK_EQ(gv_segment_check(other, osize), 0);
    fp_shm_unmap(other, osize);

    fflush(NULL);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        void *m = NULL;
        size_t n = 0;
        if (fp_shm_open(name, 1, &m, &n) != 0 || gv_segment_check(m, n) != 0)
            _exit(2);
        if (!gv_rq_acquire(gv_cluster_at(m, 1), &cfg))
            _exit(3);
        gv_set_health(gv_cluster_at(m, 1), gv_endpoint_at(m, 3), 0);
        if (!gv_bucket_take(gv_bucket_at(m, 1), 5, 1, 1000, 5000))
            _exit(4);
        fp_shm_unmap(m, n);
        _exit(0);
    }
    CHECK_EQ(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK_EQ(ldi64(&gv_cluster_at(base, 1)->rq_active), 1);
    CHECK_EQ(ld64(&gv_cluster_at(base, 1)->version), 1);
    CHECK(!gv_endpoint_available(gv_endpoint_at(base, 3)));
    CHECK(gv_endpoint_available(gv_endpoint_at(base, 2)));
    CHECK_EQ(ld64(&gv_bucket_at(base, 1)->allowed), 1);
    CHECK_EQ(ld64(&gv_cluster_at(base, 0)->version), 0);   /* the neighbour slot untouched */
    fp_shm_unmap(base, size);
    CHECK_EQ(fp_shm_unlink(name), 0);
    return 0;
}

/* ---- circuit breakers ----------------------------------------------------------- */

static int test_rq_breaker(void)
{
    struct seg s;
    gv_cluster *c;
    gv_cluster_cfg cfg = cfg_open();
    int k;

    CHECK_EQ(seg_map(&s, 1, 0, 0), 0);
    c = gv_cluster_at(s.base, 0);
    cfg.max_requests = 3;
    for (k = 0; k < 3; k++)
        CHECK_EQ(gv_rq_acquire(c, &cfg), 1);
    CHECK_EQ(gv_rq_acquire(c, &cfg), 0);
    CHECK_EQ(gv_rq_acquire(c, &cfg), 0);
    CHECK_EQ(ldi64(&c->rq_active), 3);                     /* the refusals were undone */
    CHECK_EQ(ld64(&c->rq_overflow), 2);
    gv_rq_release(c);
    CHECK_EQ(gv_rq_acquire(c, &cfg), 1);
    CHECK_EQ(gv_rq_acquire(c, &cfg), 0);
    CHECK_EQ(ld64(&c->rq_overflow), 3);
    cfg.max_requests = 5;                                  /* raised: room again */
    CHECK_EQ(gv_rq_acquire(c, &cfg), 1);
    cfg.max_requests = 1;                                  /* lowered below the count */
    CHECK_EQ(gv_rq_acquire(c, &cfg), 0);
    CHECK_EQ(ldi64(&c->rq_active), 4);
    for (k = 0; k < 4; k++)
        gv_rq_release(c);
    CHECK_EQ(ldi64(&c->rq_active), 0);

    cfg.max_requests = 0;                                  /* zero admits nothing */
    CHECK_EQ(gv_rq_acquire(c, &cfg), 0);
    cfg.max_requests = GV_UNLIMITED;
    for (k = 0; k < 10000; k++)
        CHECK_EQ(gv_rq_acquire(c, &cfg), 1);
    CHECK_EQ(ldi64(&c->rq_active), 10000);
    CHECK_EQ(ld64(&c->cx_overflow) + ld64(&c->rq_pending_overflow) + ld64(&c->rq_retry_overflow), 0);
    seg_unmap(&s);
    return 0;
}

static int test_cx_and_pending_breakers(void)
{
    struct seg s;
    gv_cluster *c;
    gv_cluster_cfg cfg = cfg_open();

    CHECK_EQ(seg_map(&s, 1, 0, 0), 0);
    c = gv_cluster_at(s.base, 0);
    cfg.max_connections = 2;
    cfg.max_pending_requests = 1;
    CHECK_EQ(gv_cx_acquire(c, &cfg), 1);
    CHECK_EQ(gv_cx_acquire(c, &cfg), 1);
    CHECK_EQ(gv_cx_acquire(c, &cfg), 0);
    CHECK_EQ(ldi64(&c->cx_active), 2);
    CHECK_EQ(ld64(&c->cx_overflow), 1);
    CHECK_EQ(gv_pending_acquire(c, &cfg), 1);
    CHECK_EQ(gv_pending_acquire(c, &cfg), 0);
    CHECK_EQ(ldi64(&c->rq_pending), 1);
    CHECK_EQ(ld64(&c->rq_pending_overflow), 1);
    gv_cx_release(c);
    gv_pending_release(c);
    CHECK_EQ(gv_cx_acquire(c, &cfg), 1);
    CHECK_EQ(gv_pending_acquire(c, &cfg), 1);
    gv_cx_release(c);
    gv_cx_release(c);
    gv_pending_release(c);
    CHECK_EQ(ldi64(&c->cx_active), 0);
    CHECK_EQ(ldi64(&c->rq_pending), 0);
    CHECK_EQ(ld64(&c->rq_overflow), 0);                    /* each breaker its own counter */
    seg_unmap(&s);
    return 0;
}

static int test_retry_breaker(void)
{
    struct seg s;
    gv_cluster *c;
    gv_cluster_cfg cfg = cfg_open();
    int k;

    CHECK_EQ(seg_map(&s, 1, 0, 0), 0);
    c = gv_cluster_at(s.base, 0);

    /* max_retries alone */
    cfg.max_retries = 2;
    CHECK_EQ(gv_retry_acquire(c, &cfg), 1);
    CHECK_EQ(gv_retry_acquire(c, &cfg), 1);
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);
    CHECK_EQ(ldi64(&c->rq_retry_active), 2);
    CHECK_EQ(ld64(&c->rq_retry), 2);
    CHECK_EQ(ld64(&c->rq_retry_overflow), 1);
    gv_retry_release(c);
    gv_retry_release(c);

    /* budget: 20% of rq_active, at least 3 */
    cfg.max_retries = GV_UNLIMITED;
    cfg.budget_percent = 20;
    cfg.min_retry_concurrency = 3;
    for (k = 0; k < 3; k++)
        CHECK_EQ(gv_retry_acquire(c, &cfg), 1);            /* rq_active 0: the floor */
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);
    for (k = 0; k < 3; k++)
        gv_retry_release(c);
    __atomic_store_n((int64_t *)&c->rq_active, 100, __ATOMIC_RELAXED);
    for (k = 0; k < 20; k++)
        CHECK_EQ(gv_retry_acquire(c, &cfg), 1);            /* 20% of 100 */
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);
    __atomic_store_n((int64_t *)&c->rq_active, 104, __ATOMIC_RELAXED);
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);                /* 20.8 rounds down */
    __atomic_store_n((int64_t *)&c->rq_active, 105, __ATOMIC_RELAXED);
    CHECK_EQ(gv_retry_acquire(c, &cfg), 1);                /* 21 */
    cfg.max_retries = 10;                                  /* both apply: the lower wins */
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);
    for (k = 0; k < 21; k++)
        gv_retry_release(c);
    CHECK_EQ(ldi64(&c->rq_retry_active), 0);
    for (k = 0; k < 10; k++)
        CHECK_EQ(gv_retry_acquire(c, &cfg), 1);
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);
    for (k = 0; k < 10; k++)
        gv_retry_release(c);
    __atomic_store_n((int64_t *)&c->rq_active, -5, __ATOMIC_RELAXED); /* never trusted below 0 */
    cfg.max_retries = GV_UNLIMITED;
    for (k = 0; k < 3; k++)
        CHECK_EQ(gv_retry_acquire(c, &cfg), 1);
    CHECK_EQ(gv_retry_acquire(c, &cfg), 0);
    CHECK_EQ(ld64(&c->rq_retry), 2 + 3 + 20 + 1 + 10 + 3);
    CHECK_EQ(ld64(&c->rq_retry_overflow), 1 + 1 + 1 + 1 + 1 + 1 + 1);
    seg_unmap(&s);
    return 0;
}

/* ---- outlier detection ----------------------------------------------------------- */

static int test_outlier_disabled(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;
    gv_cluster_cfg cfg = cfg_od(1, 1, 1000, 10000, 100, 1);

    CHECK_EQ(seg_map(&s, 1, 1, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);
    cfg.od_enabled = 0;
    CHECK_EQ(report_n(c, ep, &cfg, GV_GATEWAY, 50, 1000), 0);
    CHECK_EQ(ld32(&ep->cons_5xx), 0);                      /* errors not even tracked */
    CHECK_EQ(ld32(&ep->cons_gw), 0);
    CHECK(gv_endpoint_available(ep));
    cfg.od_enabled = 1;
    CHECK_EQ(report_n(c, ep, &cfg, 7, 50, 1000), 0);       /* an unknown outcome counts as nothing */
    CHECK_EQ(ld32(&ep->cons_5xx), 0);
    CHECK_EQ(ld64(&c->version), 0);
    seg_unmap(&s);
    return 0;
}

static int test_outlier_5xx_threshold(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;
    gv_cluster_cfg cfg = cfg_od(5, 0, 30000, 300000, 100, 4);

    CHECK_EQ(seg_map(&s, 1, 1, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);

    CHECK_EQ(report_n(c, ep, &cfg, GV_5XX, 4, 1000), 0);
    CHECK_EQ(ld32(&ep->cons_5xx), 4);
    CHECK_EQ(gv_outlier_report(c, ep, &cfg, GV_OK, 1000), 0);   /* a success breaks the run */
    CHECK_EQ(ld32(&ep->cons_5xx), 0);
    CHECK_EQ(report_n(c, ep, &cfg, GV_5XX, 4, 1000), 0);
    CHECK(gv_endpoint_available(ep));
    CHECK_EQ(ld64(&c->version), 0);
    CHECK_EQ(gv_outlier_report(c, ep, &cfg, GV_GATEWAY, 2000), 1); /* a gateway error is a 5xx too */
    CHECK(!gv_endpoint_available(ep));
    CHECK_EQ(ld32(&ep->ejected), 1);
    CHECK_EQ(ld32(&ep->ejections), 1);
    CHECK_EQ(ld64(&ep->eject_until_ms), 2000 + 30000);
    CHECK_EQ(ld32(&ep->cons_5xx), 0);                      /* counts reset on ejection */
    CHECK_EQ(ld32(&ep->cons_gw), 0);
    CHECK_EQ(ldi64(&c->ejected), 1);
    CHECK_EQ(ld64(&c->version), 1);
    CHECK_EQ(ld64(&c->ejections_total), 1);
    CHECK_EQ(ld64(&c->ejections_5xx), 1);
    CHECK_EQ(ld64(&c->ejections_gateway), 0);

    /* in-flight requests still failing on an ejected host change nothing */
    CHECK_EQ(report_n(c, ep, &cfg, GV_5XX, 20, 2500), 0);
    CHECK_EQ(ldi64(&c->ejected), 1);
    CHECK_EQ(ld64(&c->version), 1);
    CHECK_EQ(ld64(&c->ejections_overflow), 0);
    CHECK_EQ(ld64(&ep->eject_until_ms), 32000);
    seg_unmap(&s);
    return 0;
}

static int test_outlier_gateway_threshold(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;
    gv_cluster_cfg cfg = cfg_od(0, 3, 1000, 10000, 100, 4);

    CHECK_EQ(seg_map(&s, 1, 2, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);

    /* consecutive_5xx off: plain 5xx never eject, and they break a gateway run */
    CHECK_EQ(report_n(c, ep, &cfg, GV_5XX, 100, 1), 0);
    CHECK_EQ(report_n(c, ep, &cfg, GV_GATEWAY, 2, 1), 0);
    CHECK_EQ(ld32(&ep->cons_gw), 2);
    CHECK_EQ(gv_outlier_report(c, ep, &cfg, GV_5XX, 1), 0);
    CHECK_EQ(ld32(&ep->cons_gw), 0);
    CHECK_EQ(ld32(&ep->cons_5xx), 103);
    CHECK_EQ(report_n(c, ep, &cfg, GV_GATEWAY, 2, 1), 0);
    CHECK_EQ(gv_outlier_report(c, ep, &cfg, GV_GATEWAY, 7), 1);
    CHECK_EQ(ld64(&c->ejections_gateway), 1);
    CHECK_EQ(ld64(&c->ejections_5xx), 0);
    CHECK_EQ(ld64(&ep->eject_until_ms), 1007);

    /* both thresholds reached by the same failure: counted as consecutive_5xx */
    ep = gv_endpoint_at(s.base, 1);
    cfg.consecutive_5xx = 3;
    CHECK_EQ(report_n(c, ep, &cfg, GV_GATEWAY, 3, 1), 1);
    CHECK_EQ(ld64(&c->ejections_5xx), 1);
    CHECK_EQ(ld64(&c->ejections_gateway), 1);
    CHECK_EQ(ld64(&c->ejections_total), 2);
    CHECK_EQ(ldi64(&c->ejected), 2);
    CHECK_EQ(ld64(&c->version), 2);

    /* both thresholds 0: detection on, nothing enforced */
    gv_endpoint_reset(ep);
    cfg.consecutive_5xx = cfg.consecutive_gateway_failure = 0;
    CHECK_EQ(report_n(c, ep, &cfg, GV_GATEWAY, 100, 1), 0);
    seg_unmap(&s);
    return 0;
}

static int test_outlier_ejection_cap(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep[10];
    gv_cluster_cfg cfg = cfg_od(1, 0, 1000, 10000, 30, 10);   /* 30% of 10: three */
    int k;

    CHECK_EQ(seg_map(&s, 1, 10, 0), 0);
    c = gv_cluster_at(s.base, 0);
    for (k = 0; k < 10; k++)
        ep[k] = gv_endpoint_at(s.base, (uint32_t)k);
    for (k = 0; k < 3; k++)
        CHECK_EQ(gv_outlier_report(c, ep[k], &cfg, GV_5XX, 100), 1);
    CHECK_EQ(gv_outlier_report(c, ep[3], &cfg, GV_5XX, 100), 0);
    CHECK_EQ(gv_outlier_report(c, ep[3], &cfg, GV_5XX, 100), 0);   /* still past the threshold: tries again */
    CHECK_EQ(ldi64(&c->ejected), 3);
    CHECK_EQ(ld64(&c->ejections_overflow), 2);
    CHECK_EQ(ld64(&c->ejections_total), 3);
    CHECK_EQ(ld64(&c->version), 3);
    CHECK(gv_endpoint_available(ep[3]));
    CHECK_EQ(ld32(&ep[3]->ejections), 0);
    CHECK_EQ(ld32(&ep[3]->cons_5xx), 2);

    /* room again once one is un-ejected: the next failure ejects */
    CHECK_EQ(gv_uneject_due(c, ep[0], &cfg, 1100), 1);
    CHECK_EQ(ldi64(&c->ejected), 2);
    CHECK_EQ(gv_outlier_report(c, ep[3], &cfg, GV_5XX, 1200), 1);
    CHECK_EQ(ldi64(&c->ejected), 3);

    /* the cap rounds down, but one ejection is always allowed */
    gv_cluster_reset(c);
    for (k = 0; k < 10; k++)
        gv_endpoint_reset(ep[k]);
    cfg.nhosts = 3;
    cfg.max_ejection_percent = 10;                         /* 0.3 hosts: still one */
    CHECK_EQ(gv_outlier_report(c, ep[0], &cfg, GV_5XX, 1), 1);
    CHECK_EQ(gv_outlier_report(c, ep[1], &cfg, GV_5XX, 1), 0);
    CHECK_EQ(ld64(&c->ejections_overflow), 1);
    CHECK_EQ(ldi64(&c->ejected), 1);

    gv_cluster_reset(c);
    for (k = 0; k < 10; k++)
        gv_endpoint_reset(ep[k]);
    cfg.max_ejection_percent = 0;                          /* 0%: one all the same */
    CHECK_EQ(gv_outlier_report(c, ep[0], &cfg, GV_5XX, 1), 1);
    CHECK_EQ(gv_outlier_report(c, ep[1], &cfg, GV_5XX, 1), 0);

    gv_cluster_reset(c);
    for (k = 0; k < 10; k++)
        gv_endpoint_reset(ep[k]);
    cfg.nhosts = 0;                                        /* no hosts known: one */
    CHECK_EQ(gv_outlier_report(c, ep[0], &cfg, GV_5XX, 1), 1);
    CHECK_EQ(gv_outlier_report(c, ep[1], &cfg, GV_5XX, 1), 0);

    gv_cluster_reset(c);
    for (k = 0; k < 10; k++)
        gv_endpoint_reset(ep[k]);
    cfg.nhosts = 4;
    cfg.max_ejection_percent = 250;                        /* past 100: every host, no more */
    for (k = 0; k < 4; k++)
        CHECK_EQ(gv_outlier_report(c, ep[k], &cfg, GV_5XX, 1), 1);
    CHECK_EQ(gv_outlier_report(c, ep[4], &cfg, GV_5XX, 1), 0);
    CHECK_EQ(ldi64(&c->ejected), 4);

    gv_cluster_reset(c);
    for (k = 0; k < 10; k++)
        gv_endpoint_reset(ep[k]);
    cfg.nhosts = 10;
    cfg.max_ejection_percent = 100;
    for (k = 0; k < 10; k++)
        CHECK_EQ(gv_outlier_report(c, ep[k], &cfg, GV_5XX, 1), 1);
    CHECK_EQ(ldi64(&c->ejected), 10);
    seg_unmap(&s);
    return 0;
}

/* Ejects ep (threshold 1) at `now` and un-ejects it when due; returns the
 * ejection time it got, or -1. */
static int64_t eject_cycle(gv_cluster *c, gv_endpoint *ep, const gv_cluster_cfg *cfg, uint64_t now)
{
    uint64_t until;

    if (gv_outlier_report(c, ep, cfg, GV_5XX, now) != 1)
        return -1;
    until = ld64(&ep->eject_until_ms);
    if (gv_uneject_due(c, ep, cfg, until - 1) != 0 || gv_uneject_due(c, ep, cfg, until) != 1)
        return -1;
    return (int64_t)(until - now);
}

static int test_outlier_multiplier(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;
    gv_cluster_cfg cfg = cfg_od(1, 0, 100, 350, 100, 1);
    uint64_t now = 10000;

    CHECK_EQ(seg_map(&s, 1, 1, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);

    /* each ejection lasts base * multiplier, capped at max_ejection_ms */
    CHECK_EQ(eject_cycle(c, ep, &cfg, now), 100);
    CHECK_EQ(ld32(&ep->ejections), 1);
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 200);
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 300);
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 350);
    CHECK_EQ(ld32(&ep->ejections), 4);
    /* 4 * 100 passed the cap: the multiplier stops growing */
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 350);
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 350);
    CHECK_EQ(ld32(&ep->ejections), 4);
    CHECK_EQ(ld64(&c->ejections_total), 6);
    CHECK_EQ(ldi64(&c->ejected), 0);
    CHECK_EQ(ld64(&c->version), 12);                       /* one per eject and per un-eject */

    /* max below base: base is the cap, the multiplier stays at 1 */
    gv_endpoint_reset(ep);
    cfg.max_ejection_ms = 50;
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 100);
    CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000), 100);
    CHECK_EQ(ld32(&ep->ejections), 1);

    /* Envoy defaults: 30 s, 60 s, ... up to 300 s (multiplier 10) */
    gv_endpoint_reset(ep);
    cfg.base_ejection_ms = 30000;
    cfg.max_ejection_ms = 300000;
    {
        int k;
        for (k = 1; k <= 12; k++)
            CHECK_EQ(eject_cycle(c, ep, &cfg, now += 1000000), k < 10 ? 30000 * k : 300000);
    }
    CHECK_EQ(ld32(&ep->ejections), 10);
    seg_unmap(&s);
    return 0;
}

static int test_uneject_due(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep, *other;
    gv_cluster_cfg cfg = cfg_od(2, 0, 500, 5000, 100, 2);

    CHECK_EQ(seg_map(&s, 1, 2, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);
    other = gv_endpoint_at(s.base, 1);

    CHECK_EQ(gv_uneject_due(c, ep, &cfg, 1000000), 0);    /* never ejected: nothing */
    CHECK_EQ(ld64(&c->version), 0);
    CHECK_EQ(report_n(c, ep, &cfg, GV_5XX, 2, 1000), 1);
    CHECK_EQ(gv_outlier_report(c, other, &cfg, GV_5XX, 1000), 0);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, 1000), 0);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, 1499), 0);
    CHECK(!gv_endpoint_available(ep));
    /* failures while ejected pile up; the un-ejection zeroes them */
    CHECK_EQ(report_n(c, ep, &cfg, GV_GATEWAY, 3, 1200), 0);
    CHECK_EQ(ld32(&ep->cons_5xx), 3);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, 1500), 1);
    CHECK(gv_endpoint_available(ep));
    CHECK_EQ(ld32(&ep->ejected), 0);
    CHECK_EQ(ld32(&ep->cons_5xx), 0);
    CHECK_EQ(ld32(&ep->cons_gw), 0);
    CHECK_EQ(ldi64(&c->ejected), 0);
    CHECK_EQ(ld64(&c->version), 2);
    CHECK_EQ(ld32(&ep->ejections), 1);                     /* the multiplier stays (decays later) */
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, 1500), 0);        /* once */
    CHECK_EQ(ld64(&c->version), 2);
    CHECK_EQ(ld32(&other->cons_5xx), 1);                   /* the neighbour untouched */
    CHECK_EQ(ld64(&c->ejections_total), 1);                /* totals are not undone */

    /* a health-check failure is not an ejection: uneject leaves it alone */
    CHECK_EQ(gv_set_health(c, other, 0), 1);
    CHECK_EQ(gv_uneject_due(c, other, &cfg, 99999), 0);
    CHECK(!gv_endpoint_available(other));
    seg_unmap(&s);
    return 0;
}

static int test_multiplier_decay(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;
    gv_cluster_cfg cfg = cfg_od(1, 0, 100, 10000, 100, 1);
    uint64_t until;

    CHECK_EQ(seg_map(&s, 1, 1, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);

    CHECK_EQ(eject_cycle(c, ep, &cfg, 1000), 100);         /* ends at 1100 */
    CHECK_EQ(eject_cycle(c, ep, &cfg, 1200), 200);         /* ends at 1400 */
    CHECK_EQ(eject_cycle(c, ep, &cfg, 1500), 300);         /* ends at 1800 */
    CHECK_EQ(ld32(&ep->ejections), 3);
    until = ld64(&ep->eject_until_ms);
    CHECK_EQ(until, 1800);

    /* not yet base_ejection_ms after the end: no decay */
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 50), 0);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 99), 0);
    CHECK_EQ(ld32(&ep->ejections), 3);
    /* then one step per call */
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 100), 0);
    CHECK_EQ(ld32(&ep->ejections), 2);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 100), 0);
    CHECK_EQ(ld32(&ep->ejections), 1);
    /* a new ejection now lasts base * 2 again */
    CHECK_EQ(eject_cycle(c, ep, &cfg, until + 200), 200);
    until = ld64(&ep->eject_until_ms);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 100), 0);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 200), 0);
    CHECK_EQ(ld32(&ep->ejections), 0);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, until + 300), 0); /* stops at 0 */
    CHECK_EQ(ld32(&ep->ejections), 0);
    CHECK_EQ(eject_cycle(c, ep, &cfg, until + 400), 100);

    /* an ejected host does not decay */
    CHECK_EQ(gv_outlier_report(c, ep, &cfg, GV_5XX, 100000), 1);
    CHECK_EQ(ld32(&ep->ejections), 2);
    CHECK_EQ(gv_uneject_due(c, ep, &cfg, 100150), 0);
    CHECK_EQ(ld32(&ep->ejections), 2);
    CHECK_EQ(ld64(&c->version), 2 * 5 + 1);                /* decay bumps nothing */
    seg_unmap(&s);
    return 0;
}

static int test_set_health(void)
{
    struct seg s;
    gv_cluster *c;
    gv_endpoint *ep;

    CHECK_EQ(seg_map(&s, 1, 1, 0), 0);
    c = gv_cluster_at(s.base, 0);
    ep = gv_endpoint_at(s.base, 0);
    CHECK(gv_endpoint_available(ep));
    CHECK_EQ(gv_set_health(c, ep, 1), 0);                  /* healthy already */
    CHECK_EQ(ld64(&c->version), 0);
    CHECK_EQ(gv_set_health(c, ep, 0), 1);
    CHECK(!gv_endpoint_available(ep));
    CHECK_EQ(ld32(&ep->hc_failed), 1);
    CHECK_EQ(ld64(&c->version), 1);
    CHECK_EQ(gv_set_health(c, ep, 0), 0);
    CHECK_EQ(ld64(&c->version), 1);
    CHECK_EQ(gv_set_health(c, ep, 42), 1);                 /* any nonzero is healthy */
    CHECK(gv_endpoint_available(ep));
    CHECK_EQ(ld64(&c->version), 2);

    /* ejected and health-failed: available only when neither */
    {
        gv_cluster_cfg cfg = cfg_od(1, 0, 100, 100, 100, 1);
        CHECK_EQ(gv_outlier_report(c, ep, &cfg, GV_5XX, 0), 1);
        CHECK_EQ(gv_set_health(c, ep, 0), 1);
        CHECK_EQ(gv_uneject_due(c, ep, &cfg, 100), 1);
        CHECK(!gv_endpoint_available(ep));
        CHECK_EQ(gv_set_health(c, ep, 1), 1);
        CHECK(gv_endpoint_available(ep));
        CHECK_EQ(ld64(&c->version), 6);
    }
    seg_unmap(&s);
    return 0;
}

/* ---- local rate limit ------------------------------------------------------------ */

static uint32_t bucket_tokens(gv_bucket *b)
{
    return (uint32_t)(ld64(&b->state) & 0xffffff);
}

static int test_bucket_basic(void)
{
    struct seg s;
    gv_bucket *b;
    int k;
    const uint64_t t0 = 1000000;                           /* epoch 1000 of 1 s */

    CHECK_EQ(seg_map(&s, 0, 0, 2), 0);
    b = gv_bucket_at(s.base, 0);
    CHECK_EQ(ld64(&b->state), 0);                          /* never used: full */
    for (k = 0; k < 5; k++)
        CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + (uint64_t)k * 100), 1);
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 999), 0);
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 999), 0);
    CHECK_EQ(ld64(&b->allowed), 5);
    CHECK_EQ(ld64(&b->limited), 2);
    CHECK_EQ(ld64(&b->state) >> 24, 1000 + 1);             /* the epoch, +1 */
    /* the next multiple of the interval adds tokens_per_fill */
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 1000), 1);
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 1999), 1);
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 1999), 0);
    /* three fills later: 6 tokens, capped at max_tokens */
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 4000), 1);
    CHECK_EQ(bucket_tokens(b), 4);
    /* two fills later, from 4: 5 at the most */
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 6500), 1);
    CHECK_EQ(bucket_tokens(b), 4);
    /* one fill from 0 with a small rate */
    for (k = 0; k < 4; k++)
        CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 6600), 1);
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 6600), 0);
    CHECK_EQ(gv_bucket_take(b, 5, 2, 1000, t0 + 7000), 1);
    CHECK_EQ(bucket_tokens(b), 1);
    /* a very long idle period: full, no overflow */
    CHECK_EQ(gv_bucket_take(b, 5, 0xffffffffu, 1000, t0 + (UINT64_C(1) << 38)), 1);
    CHECK_EQ(bucket_tokens(b), 4);
    CHECK_EQ(ld64(&b->allowed), 15);
    CHECK_EQ(ld64(&b->limited), 4);
    CHECK_EQ(ld64(&gv_bucket_at(s.base, 1)->state), 0);    /* the neighbour untouched */
    seg_unmap(&s);
    return 0;
}

static int test_bucket_edges(void)
{
    struct seg s;
    gv_bucket *b;
    int k;

    CHECK_EQ(seg_map(&s, 0, 0, 1), 0);
    b = gv_bucket_at(s.base, 0);

    /* epoch 0 (now < interval) is a real epoch: drained, it stays drained */
    CHECK_EQ(gv_bucket_take(b, 1, 1, 1000, 0), 1);
    CHECK(ld64(&b->state) != 0);
    CHECK_EQ(gv_bucket_take(b, 1, 1, 1000, 999), 0);
    CHECK_EQ(gv_bucket_take(b, 1, 1, 1000, 1000), 1);
    gv_bucket_reset(b);

    /* tokens_per_fill 0: never refills */
    CHECK_EQ(gv_bucket_take(b, 2, 0, 10, 100), 1);
    CHECK_EQ(gv_bucket_take(b, 2, 0, 10, 100), 1);
    CHECK_EQ(gv_bucket_take(b, 2, 0, 10, 100000), 0);
    gv_bucket_reset(b);

    /* max_tokens 0: nothing passes */
    CHECK_EQ(gv_bucket_take(b, 0, 5, 10, 100), 0);
    CHECK_EQ(gv_bucket_take(b, 0, 5, 10, 1000), 0);
    CHECK_EQ(ld64(&b->limited), 2);
    gv_bucket_reset(b);

    /* fill interval 0 is taken as 1 ms (no division by zero) */
    CHECK_EQ(gv_bucket_take(b, 1, 1, 0, 100), 1);
    CHECK_EQ(gv_bucket_take(b, 1, 1, 0, 100), 0);
    CHECK_EQ(gv_bucket_take(b, 1, 1, 0, 101), 1);
    gv_bucket_reset(b);

    /* max_tokens past 24 bits is clamped to 2^24 - 1 */
    CHECK_EQ(gv_bucket_take(b, 0xffffffffu, 1, 1000, 5000), 1);
    CHECK_EQ(bucket_tokens(b), 0xffffff - 1);
    gv_bucket_reset(b);

    /* max_tokens lowered under the tokens held: clamped */
    for (k = 0; k < 2; k++)
        CHECK_EQ(gv_bucket_take(b, 10, 1, 1000, 5000), 1);
    CHECK_EQ(bucket_tokens(b), 8);
    CHECK_EQ(gv_bucket_take(b, 3, 1, 1000, 5000), 1);
    CHECK_EQ(bucket_tokens(b), 2);
    gv_bucket_reset(b);

    /* a worker whose clock read is one fill old: no refill, no epoch going back */
    for (k = 0; k < 3; k++)
        CHECK_EQ(gv_bucket_take(b, 3, 3, 1000, 10000), 1);
    CHECK_EQ(gv_bucket_take(b, 3, 3, 1000, 9999), 0);
    CHECK_EQ(ld64(&b->state) >> 24, 11);
    CHECK_EQ(gv_bucket_take(b, 3, 3, 1000, 10500), 0);     /* still drained in epoch 10 */
    gv_bucket_reset(b);

    /* the fill interval lengthened (1 ms -> 1 s): the stored epoch is far
     * ahead; the bucket resyncs instead of starving */
    CHECK_EQ(gv_bucket_take(b, 1, 1, 1, 5000000), 1);
    CHECK_EQ(ld64(&b->state) >> 24, 5000001);
    CHECK_EQ(gv_bucket_take(b, 1, 1, 1000, 5000000), 0);   /* resync: no refill */
    CHECK_EQ(ld64(&b->state) >> 24, 5001);
    CHECK_EQ(gv_bucket_take(b, 1, 1, 1000, 5001000), 1);   /* next fill: back to normal */
    seg_unmap(&s);
    return 0;
}

/* ---- retries (pure) ------------------------------------------------------------------ */

#define ALL_RETRY_ON 0x7f

static int test_retry_wanted(void)
{
    static const struct {
        uint32_t on;
        int outcome, status, want;
    } t[] = {
        /* 5xx: any status >= 500, reset, connect failure, timeout */
        {GV_RETRY_5XX, GV_ATTEMPT_STATUS, 500, 1},
        {GV_RETRY_5XX, GV_ATTEMPT_STATUS, 503, 1},
        {GV_RETRY_5XX, GV_ATTEMPT_STATUS, 599, 1},
        {GV_RETRY_5XX, GV_ATTEMPT_STATUS, 499, 0},
        {GV_RETRY_5XX, GV_ATTEMPT_STATUS, 409, 0},
        {GV_RETRY_5XX, GV_ATTEMPT_STATUS, 200, 0},
        {GV_RETRY_5XX, GV_ATTEMPT_RESET, 0, 1},
        {GV_RETRY_5XX, GV_ATTEMPT_CONNECT_FAIL, 0, 1},
        {GV_RETRY_5XX, GV_ATTEMPT_TIMEOUT, 0, 1},
        /* gateway-error: 502/503/504 and timeout */
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_STATUS, 502, 1},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_STATUS, 503, 1},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_STATUS, 504, 1},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_STATUS, 500, 0},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_STATUS, 501, 0},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_STATUS, 505, 0},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_TIMEOUT, 0, 1},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_RESET, 0, 0},
        {GV_RETRY_GATEWAY_ERROR, GV_ATTEMPT_CONNECT_FAIL, 0, 0},
        /* reset */
        {GV_RETRY_RESET, GV_ATTEMPT_RESET, 0, 1},
        {GV_RETRY_RESET, GV_ATTEMPT_CONNECT_FAIL, 0, 0},
        {GV_RETRY_RESET, GV_ATTEMPT_TIMEOUT, 0, 0},
        {GV_RETRY_RESET, GV_ATTEMPT_STATUS, 503, 0},
        /* connect-failure */
        {GV_RETRY_CONNECT_FAILURE, GV_ATTEMPT_CONNECT_FAIL, 0, 1},
        {GV_RETRY_CONNECT_FAILURE, GV_ATTEMPT_RESET, 0, 0},
        {GV_RETRY_CONNECT_FAILURE, GV_ATTEMPT_TIMEOUT, 0, 0},
        {GV_RETRY_CONNECT_FAILURE, GV_ATTEMPT_STATUS, 503, 0},
        /* retriable-4xx: 409 */
        {GV_RETRY_RETRIABLE_4XX, GV_ATTEMPT_STATUS, 409, 1},
        {GV_RETRY_RETRIABLE_4XX, GV_ATTEMPT_STATUS, 408, 0},
        {GV_RETRY_RETRIABLE_4XX, GV_ATTEMPT_STATUS, 429, 0},
        {GV_RETRY_RETRIABLE_4XX, GV_ATTEMPT_STATUS, 503, 0},
        {GV_RETRY_RETRIABLE_4XX, GV_ATTEMPT_RESET, 0, 0},
        /* refused-stream: nothing for HTTP/1 */
        {GV_RETRY_REFUSED_STREAM, GV_ATTEMPT_STATUS, 503, 0},
        {GV_RETRY_REFUSED_STREAM, GV_ATTEMPT_RESET, 0, 0},
        {GV_RETRY_REFUSED_STREAM, GV_ATTEMPT_CONNECT_FAIL, 0, 0},
        {GV_RETRY_REFUSED_STREAM, GV_ATTEMPT_TIMEOUT, 0, 0},
        /* status codes: the list is in the gv_retry below (503, 429, 418) */
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 503, 1},
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 429, 1},
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 418, 1},
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 502, 0},
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 200, 0},
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 0, 0},   /* unused entries are not codes */
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_RESET, 0, 0},
        {GV_RETRY_STATUS_CODES, GV_ATTEMPT_TIMEOUT, 0, 0},
        /* nothing asked, nothing retried; unknown outcomes never */
        {0, GV_ATTEMPT_STATUS, 503, 0},
        {0, GV_ATTEMPT_RESET, 0, 0},
        {0, GV_ATTEMPT_CONNECT_FAIL, 0, 0},
        {0, GV_ATTEMPT_TIMEOUT, 0, 0},
        {ALL_RETRY_ON, 0, 503, 0},
        {ALL_RETRY_ON, 5, 503, 0},
        {ALL_RETRY_ON, -1, 503, 0},
        {ALL_RETRY_ON, GV_ATTEMPT_STATUS, 200, 0},
        {ALL_RETRY_ON, GV_ATTEMPT_STATUS, 404, 0},
        {ALL_RETRY_ON, GV_ATTEMPT_STATUS, 409, 1},
        {ALL_RETRY_ON, GV_ATTEMPT_STATUS, 501, 1},
        /* Istio's default: connect-failure,refused-stream,...,retriable-status-codes [503] */
        {GV_RETRY_CONNECT_FAILURE | GV_RETRY_REFUSED_STREAM | GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 503, 1},
        {GV_RETRY_CONNECT_FAILURE | GV_RETRY_REFUSED_STREAM | GV_RETRY_STATUS_CODES, GV_ATTEMPT_STATUS, 504, 0},
        {GV_RETRY_CONNECT_FAILURE | GV_RETRY_REFUSED_STREAM | GV_RETRY_STATUS_CODES, GV_ATTEMPT_RESET, 0, 0},
        {GV_RETRY_CONNECT_FAILURE | GV_RETRY_REFUSED_STREAM | GV_RETRY_STATUS_CODES, GV_ATTEMPT_CONNECT_FAIL, 0, 1},
    };
    gv_retry r;
    size_t i;
    int bad = 0;

    memset(&r, 0, sizeof(r));
    r.ncodes = 3;
    r.codes[0] = 503;
    r.codes[1] = 429;
    r.codes[2] = 418;
    for (i = 0; i < TK_NELEM(t); i++) {
        r.retry_on = t[i].on;
        if (gv_retry_wanted(&r, t[i].outcome, t[i].status) != t[i].want) {
            fprintf(stderr, "  row %zu: retry_on %#x outcome %d status %d: want %d\n", i, t[i].on,
                    t[i].outcome, t[i].status, t[i].want);
            bad = 1;
        }
    }
    CHECK(!bad);

    /* all 8 code slots are read; an ncodes past 8 reads no further */
    r.retry_on = GV_RETRY_STATUS_CODES;
    r.ncodes = GV_MAX_RETRIABLE_CODES;
    for (i = 0; i < GV_MAX_RETRIABLE_CODES; i++)
        r.codes[i] = (uint16_t)(500 + i);
    CHECK_EQ(gv_retry_wanted(&r, GV_ATTEMPT_STATUS, 507), 1);
    CHECK_EQ(gv_retry_wanted(&r, GV_ATTEMPT_STATUS, 508), 0);
    r.ncodes = 1000;
    CHECK_EQ(gv_retry_wanted(&r, GV_ATTEMPT_STATUS, 507), 1);
    r.ncodes = 2;
    CHECK_EQ(gv_retry_wanted(&r, GV_ATTEMPT_STATUS, 501), 1);
    CHECK_EQ(gv_retry_wanted(&r, GV_ATTEMPT_STATUS, 502), 0);   /* listed, past ncodes */
    r.ncodes = 0;
    CHECK_EQ(gv_retry_wanted(&r, GV_ATTEMPT_STATUS, 500), 0);
    return 0;
}

static int test_backoff(void)
{
    gv_retry r;
    uint64_t seed = 0x9e3779b97f4a7c15ULL;
    uint32_t n, k, ceiling, v, seen_max;

    memset(&r, 0, sizeof(r));
    r.backoff_base_ms = 25;
    r.backoff_max_ms = 250;

    /* the ceiling: 25 * (2^n - 1), at most 250 */
    static const uint32_t want[] = {0, 25, 75, 175, 250, 250, 250};
    for (n = 0; n < TK_NELEM(want); n++) {
        CHECK_EQ(gv_backoff_ms(&r, n, 0), 0);
        CHECK_EQ(gv_backoff_ms(&r, n, want[n]), want[n]);          /* both ends reachable */
        CHECK_EQ(gv_backoff_ms(&r, n, (uint64_t)want[n] + 1), 0);  /* uniform: wraps */
    }
    /* any draw stays within bounds, and spreads over them */
    for (n = 1; n <= 70; n++) {
        ceiling = n >= 4 ? 250 : 25 * ((1u << n) - 1);
        seen_max = 0;
        for (k = 0; k < 2000; k++) {
            v = gv_backoff_ms(&r, n, xorshift64(&seed));
            CHECK(v <= ceiling);
            if (v > seen_max)
                seen_max = v;
        }
        CHECK(seen_max >= ceiling * 9 / 10);
        CHECK_EQ(gv_backoff_ms(&r, n, UINT64_MAX), UINT64_MAX % ((uint64_t)ceiling + 1));
    }
    CHECK(gv_backoff_ms(&r, UINT32_MAX, UINT64_MAX) <= 250);       /* huge n: no shift overflow */

    /* huge base and max: the product never wraps */
    r.backoff_base_ms = UINT32_MAX;
    r.backoff_max_ms = UINT32_MAX;
    CHECK_EQ(gv_backoff_ms(&r, 1, UINT32_MAX), UINT32_MAX);
    CHECK_EQ(gv_backoff_ms(&r, 31, UINT32_MAX), UINT32_MAX);
    CHECK_EQ(gv_backoff_ms(&r, 32, UINT32_MAX), UINT32_MAX);
    CHECK_EQ(gv_backoff_ms(&r, 33, (uint64_t)UINT32_MAX + 1), 0);
    for (k = 0; k < 1000; k++)
        CHECK(gv_backoff_ms(&r, k % 80, xorshift64(&seed)) <= UINT32_MAX);

    /* base 0 or max 0: no wait */
    r.backoff_base_ms = 0;
    r.backoff_max_ms = 250;
    for (n = 0; n < 80; n++)
        CHECK_EQ(gv_backoff_ms(&r, n, xorshift64(&seed)), 0);
    r.backoff_base_ms = 25;
    r.backoff_max_ms = 0;
    for (n = 0; n < 80; n++)
        CHECK_EQ(gv_backoff_ms(&r, n, xorshift64(&seed)), 0);
    /* max below base: max rules */
    r.backoff_base_ms = 100;
    r.backoff_max_ms = 40;
    for (k = 0; k < 1000; k++)
        CHECK(gv_backoff_ms(&r, 1, xorshift64(&seed)) <= 40);
    return 0;
}

static int test_method_idempotent(void)
{
    static const struct {
        const char *m;
        int want;
    } t[] = {
        {"GET", 1}, {"HEAD", 1}, {"OPTIONS", 1}, {"TRACE", 1}, {"PUT", 1}, {"DELETE", 1},
        {"POST", 0}, {"PATCH", 0}, {"CONNECT", 0}, {"PROPFIND", 0}, {"", 0},
        {"get", 0}, {"Get", 0}, {"put", 0}, {"delete", 0}, {"GETS", 0}, {"GE", 0}, {"HEADS", 0},
        {"DELETED", 0}, {"OPTION", 0}, {"TRACEX", 0}, {"PUT ", 0}, {" GET", 0},
    };
    size_t i;
    char buf[16];

    for (i = 0; i < TK_NELEM(t); i++) {
        if (gv_method_idempotent(t[i].m, (uint32_t)strlen(t[i].m)) != t[i].want) {
            fprintf(stderr, "  method \"%s\": want %d\n", t[i].m, t[i].want);
            return 1;
        }
    }
    /* the length bounds the compare: a prefix of a longer buffer */
    memcpy(buf, "GETXYZ", 7);
    CHECK_EQ(gv_method_idempotent(buf, 3), 1);
    CHECK_EQ(gv_method_idempotent(buf, 4), 0);
    CHECK_EQ(gv_method_idempotent(NULL, 0), 0);
    /* reads no byte past len: the method ends at a guard page */
    {
        tk_guard g;
        tk_guard_init(&g, 4096);
        CHECK_EQ(gv_method_idempotent(tk_guard_place(&g, "OPTIONS", 7), 7), 1);
        CHECK_EQ(gv_method_idempotent(tk_guard_place(&g, "DELETE", 6), 6), 1);
        CHECK_EQ(gv_method_idempotent(tk_guard_place(&g, "POST", 4), 4), 0);
        tk_guard_unmap(&g);
    }
    return 0;
}

/* ---- forked: 4 processes, one segment ------------------------------------------------ */

#define MP_PAIRS 200000      /* acquire/release pairs per process */
#define MP_MAX_REQUESTS 10
#define MP_HOLD 6            /* requests one process holds at most: 4 x 6 > 10 */

struct mp_shared {
    int64_t ready;           /* barrier */
    int64_t holding;         /* admitted and not yet released, over all processes */
    int64_t max_holding;     /* the most ever admitted at once */
    int64_t max_raw;         /* the largest rq_active value ever loaded */
    int64_t attempts;
    int64_t acquired;
    int64_t allowed[NPROC];
    int64_t epoch_done;      /* bucket epochs barrier */
};

struct mp_arg {
    struct mp_shared *sh;
    void *base;
};

static int mp_breaker_child(int k, void *argp)
{
    struct mp_arg *a = argp;
    struct mp_shared *sh = a->sh;
    gv_cluster *c = gv_cluster_at(a->base, 0);
    gv_cluster_cfg cfg = cfg_open();
    uint64_t rnd = 0x2545F4914F6CDD1DULL * (uint64_t)(k + 1);
    int64_t pairs = 0, attempts = 0, raw;
    int held = 0;

    cfg.max_requests = MP_MAX_REQUESTS;
    __atomic_add_fetch(&sh->ready, 1, __ATOMIC_ACQ_REL);
    if (spin_until(&sh->ready, NPROC) != 0)
        return 2;
    while (pairs < MP_PAIRS || held > 0) {
        int want_more = pairs < MP_PAIRS && held < MP_HOLD && (held == 0 || (xorshift64(&rnd) & 1));

        if (want_more) {
            attempts++;
            if (gv_rq_acquire(c, &cfg)) {
                atomic_max(&sh->max_holding, __atomic_add_fetch(&sh->holding, 1, __ATOMIC_SEQ_CST));
                held++;
                pairs++;
            }
            raw = ldi64(&c->rq_active);
            atomic_max(&sh->max_raw, raw);
        } else {
            __atomic_sub_fetch(&sh->holding, 1, __ATOMIC_SEQ_CST);
            gv_rq_release(c);
            held--;
        }
    }
    __atomic_add_fetch(&sh->attempts, attempts, __ATOMIC_RELAXED);
    __atomic_add_fetch(&sh->acquired, pairs, __ATOMIC_RELAXED);
    return 0;
}

static int test_mp_rq_breaker(void)
{
    struct seg s;
    struct mp_arg a;
    gv_cluster *c;
    int rc;

    CHECK_EQ(seg_map(&s, 1, 0, 0), 0);
    a.base = s.base;
    a.sh = mmap(NULL, sizeof(*a.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(a.sh != MAP_FAILED);
    c = gv_cluster_at(s.base, 0);
    rc = run_children(mp_breaker_child, &a);
    fprintf(stderr, "  %lld attempts, %lld admitted, %llu overflow; at once: %lld admitted, "
            "rq_active seen up to %lld\n", (long long)a.sh->attempts, (long long)a.sh->acquired,
            (unsigned long long)ld64(&c->rq_overflow), (long long)a.sh->max_holding,
            (long long)a.sh->max_raw);
    CHECK_EQ(rc, 0);
    CHECK_EQ(a.sh->acquired, NPROC * MP_PAIRS);
    CHECK_EQ(ldi64(&c->rq_active), 0);                     /* every admission released */
    CHECK_EQ(a.sh->max_holding, MP_MAX_REQUESTS);          /* reached, never passed */
    /* a raw load may catch a refused increment before its undo: one per
     * other process at the most */
    CHECK(a.sh->max_raw <= MP_MAX_REQUESTS + NPROC - 1);
    CHECK(ld64(&c->rq_overflow) > 0);                      /* they really contended */
    CHECK_EQ((int64_t)ld64(&c->rq_overflow) + a.sh->acquired, a.sh->attempts);
    munmap(a.sh, sizeof(*a.sh));
    seg_unmap(&s);
    return 0;
}

#define MP_TAKES 200000
#define MP_BUCKET_MAX 500000   /* of 800000 takes: long enough for the 4 to overlap */

static int mp_bucket_child(int k, void *argp)
{
    struct mp_arg *a = argp;
    gv_bucket *b = gv_bucket_at(a->base, 0);
    int64_t allowed = 0;
    int i;

    __atomic_add_fetch(&a->sh->ready, 1, __ATOMIC_ACQ_REL);
    if (spin_until(&a->sh->ready, NPROC) != 0)
        return 2;
    for (i = 0; i < MP_TAKES; i++)                         /* one epoch: now fixed */
        allowed += gv_bucket_take(b, MP_BUCKET_MAX, 100, 60000, 7 * 60000 + 123);
    a->sh->allowed[k] = allowed;
    return 0;
}

static int test_mp_bucket_one_epoch(void)
{
    struct seg s;
    struct mp_arg a;
    gv_bucket *b;
    int64_t sum = 0;
    int k, rc;

    CHECK_EQ(seg_map(&s, 0, 0, 1), 0);
    a.base = s.base;
    a.sh = mmap(NULL, sizeof(*a.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(a.sh != MAP_FAILED);
    b = gv_bucket_at(s.base, 0);
    rc = run_children(mp_bucket_child, &a);
    CHECK_EQ(rc, 0);
    for (k = 0; k < NPROC; k++)
        sum += a.sh->allowed[k];
    fprintf(stderr, "  allowed per process: %lld %lld %lld %lld\n", (long long)a.sh->allowed[0],
            (long long)a.sh->allowed[1], (long long)a.sh->allowed[2], (long long)a.sh->allowed[3]);
    CHECK_EQ(sum, MP_BUCKET_MAX);
    CHECK_EQ(ld64(&b->allowed), MP_BUCKET_MAX);
    CHECK_EQ(ld64(&b->limited), (uint64_t)NPROC * MP_TAKES - MP_BUCKET_MAX);
    CHECK_EQ(bucket_tokens(b), 0);
    munmap(a.sh, sizeof(*a.sh));
    seg_unmap(&s);
    return 0;
}

#define MP_EPOCHS 20
#define MP_EPOCH_MAX 50000
#define MP_FILL 30000
#define MP_EPOCH_TAKES 30000 /* per process per epoch: 120000 > the tokens there are */

static int mp_bucket_epochs_child(int k, void *argp)
{
    struct mp_arg *a = argp;
    gv_bucket *b = gv_bucket_at(a->base, 0);
    int64_t allowed = 0;
    int e, i;

    for (e = 0; e < MP_EPOCHS; e++) {
        uint64_t now = (uint64_t)(1000 + e) * 250 + (uint64_t)k * 31;   /* same epoch for all */
        for (i = 0; i < MP_EPOCH_TAKES; i++)
            allowed += gv_bucket_take(b, MP_EPOCH_MAX, MP_FILL, 250, now);
        __atomic_add_fetch(&a->sh->epoch_done, 1, __ATOMIC_ACQ_REL);
        if (spin_until(&a->sh->epoch_done, (int64_t)NPROC * (e + 1)) != 0)
            return 2;
    }
    a->sh->allowed[k] = allowed;
    return 0;
}

static int test_mp_bucket_epochs(void)
{
    struct seg s;
    struct mp_arg a;
    gv_bucket *b;
    int64_t sum = 0;
    int k, rc;

    CHECK_EQ(seg_map(&s, 0, 0, 1), 0);
    a.base = s.base;
    a.sh = mmap(NULL, sizeof(*a.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(a.sh != MAP_FAILED);
    b = gv_bucket_at(s.base, 0);
    rc = run_children(mp_bucket_epochs_child, &a);
    CHECK_EQ(rc, 0);
    for (k = 0; k < NPROC; k++)
        sum += a.sh->allowed[k];
    /* full at first, then exactly one fill per epoch */
    CHECK_EQ(sum, MP_EPOCH_MAX + (MP_EPOCHS - 1) * MP_FILL);
    CHECK_EQ(ld64(&b->allowed), (uint64_t)sum);
    CHECK_EQ(ld64(&b->allowed) + ld64(&b->limited), (uint64_t)NPROC * MP_EPOCHS * MP_EPOCH_TAKES);
    munmap(a.sh, sizeof(*a.sh));
    seg_unmap(&s);
    return 0;
}

#define MP_HOSTS 10
#define MP_ROUNDS 2000

/* Every process reports gateway failures on every endpoint; round r of
 * process k runs at time r: ejections end and get un-ejected by process 0
 * (the manager's role) while the others keep failing. */
static int mp_eject_child(int k, void *argp)
{
    struct mp_arg *a = argp;
    gv_cluster *c = gv_cluster_at(a->base, 0);
    gv_cluster_cfg cfg = cfg_od(3, 2, 5, 40, 30, MP_HOSTS);   /* at most 3 ejected */
    uint64_t rnd = 0x9E3779B97F4A7C15ULL * (uint64_t)(k + 3);
    int r, h, ejected;

    __atomic_add_fetch(&a->sh->ready, 1, __ATOMIC_ACQ_REL);
    if (spin_until(&a->sh->ready, NPROC) != 0)
        return 2;
    for (r = 0; r < MP_ROUNDS; r++) {
        for (h = 0; h < MP_HOSTS; h++) {
            gv_endpoint *ep = gv_endpoint_at(a->base, (uint32_t)h);
            uint64_t x = xorshift64(&rnd);
            int outcome = (x & 3) == 0 ? GV_OK : (x & 4) ? GV_GATEWAY : GV_5XX;

            gv_outlier_report(c, ep, &cfg, outcome, (uint64_t)r);
            if (k == 0)
                gv_uneject_due(c, ep, &cfg, (uint64_t)r);
        }
        ejected = (int)ldi64(&c->ejected);
        if (ejected < 0 || ejected > 3 + NPROC - 1)        /* a reservation may pass for an instant */
            return 3;
    }
    return 0;
}

static int test_mp_ejection(void)
{
    struct seg s;
    struct mp_arg a;
    gv_cluster *c;
    gv_cluster_cfg cfg = cfg_od(3, 2, 5, 40, 30, MP_HOSTS);
    int h, rc, nej = 0;
    uint64_t uneject = 0;

    CHECK_EQ(seg_map(&s, 1, MP_HOSTS, 0), 0);
    a.base = s.base;
    a.sh = mmap(NULL, sizeof(*a.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(a.sh != MAP_FAILED);
    c = gv_cluster_at(s.base, 0);
    rc = run_children(mp_eject_child, &a);
    CHECK_EQ(rc, 0);
    for (h = 0; h < MP_HOSTS; h++)
        nej += (int)ld32(&gv_endpoint_at(s.base, (uint32_t)h)->ejected);
    fprintf(stderr, "  %llu ejections (%llu 5xx, %llu gateway), %llu refused by the cap, %d ejected at the end\n",
            (unsigned long long)ld64(&c->ejections_total), (unsigned long long)ld64(&c->ejections_5xx),
            (unsigned long long)ld64(&c->ejections_gateway), (unsigned long long)ld64(&c->ejections_overflow),
            nej);
    CHECK_EQ(ldi64(&c->ejected), nej);                     /* the count is exact */
    CHECK(nej <= 3);
    CHECK(ld64(&c->ejections_total) > 10);
    CHECK(ld64(&c->ejections_overflow) > 0);
    CHECK_EQ(ld64(&c->ejections_total), ld64(&c->ejections_5xx) + ld64(&c->ejections_gateway));
    /* every ejection and every un-ejection bumped the version once */
    uneject = ld64(&c->ejections_total) - (uint64_t)nej;
    CHECK_EQ(ld64(&c->version), ld64(&c->ejections_total) + uneject);
    /* and the rest un-ejects cleanly */
    for (h = 0; h < MP_HOSTS; h++)
        gv_uneject_due(c, gv_endpoint_at(s.base, (uint32_t)h), &cfg, UINT64_MAX);
    CHECK_EQ(ldi64(&c->ejected), 0);
    munmap(a.sh, sizeof(*a.sh));
    seg_unmap(&s);
    return 0;
}

/* A worker's ledger mirrors what it holds; gv_reclaim undoes exactly that
 * (another worker's holdings stay). */
static int test_ledger_reclaim(void)
{
    struct seg s;
    gv_cluster *c0, *c1;
    gv_endpoint *ep;
    gv_cluster_cfg cfg = cfg_open();
    int64_t *dead, *live;
    uint64_t n;

    CHECK_EQ(seg_map(&s, 2, 3, 0), 0);
    CHECK_EQ(gv_ledger_slots(s.base), 2 * GV_LEDGER_CL + 3);
    dead = calloc(gv_ledger_slots(s.base), sizeof(int64_t));
    live = calloc(gv_ledger_slots(s.base), sizeof(int64_t));
    c0 = gv_cluster_at(s.base, 0);
    c1 = gv_cluster_at(s.base, 1);
    ep = gv_endpoint_at(s.base, 2);
    /* the worker that will die: 2 requests and a connection on c1, a retry on c0, 2 at ep */
    CHECK_EQ(gv_rq_acquire(c1, &cfg), 1);
    gv_ledger_add(s.base, dead, c1, GV_L_RQ, 1);
    CHECK_EQ(gv_rq_acquire(c1, &cfg), 1);
    gv_ledger_add(s.base, dead, c1, GV_L_RQ, 1);
    CHECK_EQ(gv_cx_acquire(c1, &cfg), 1);
    gv_ledger_add(s.base, dead, c1, GV_L_CX, 1);
    CHECK_EQ(gv_retry_acquire(c0, &cfg), 1);
    gv_ledger_add(s.base, dead, c0, GV_L_RETRY, 1);
    atomic_fetch_add(&ep->rq_active, 2);
    gv_ledger_add_ep(s.base, dead, ep, 2);
    /* a live worker: 1 request on c1, 1 at ep */
    CHECK_EQ(gv_rq_acquire(c1, &cfg), 1);
    gv_ledger_add(s.base, live, c1, GV_L_RQ, 1);
    atomic_fetch_add(&ep->rq_active, 1);
    gv_ledger_add_ep(s.base, live, ep, 1);
    /* pointers outside the segment are ignored, not written anywhere */
    gv_ledger_add(s.base, dead, (gv_cluster *)s.base, GV_L_RQ, 1);
    gv_ledger_add(s.base, NULL, c1, GV_L_RQ, 1);
    n = gv_reclaim(s.base, dead);
    CHECK_EQ(n, 6);
    CHECK_EQ(ldi64(&c1->rq_active), 1);
    CHECK_EQ(ldi64(&c1->cx_active), 0);
    CHECK_EQ(ldi64(&c0->rq_retry_active), 0);
    CHECK_EQ(ldi64(&ep->rq_active), 1);
    CHECK_EQ(gv_reclaim(s.base, dead), 0);              /* zeroed: twice is harmless */
    CHECK_EQ(gv_reclaim(s.base, live), 2);
    CHECK_EQ(ldi64(&c1->rq_active), 0);
    CHECK_EQ(ldi64(&ep->rq_active), 0);
    free(dead);
    free(live);
    seg_unmap(&s);
    return 0;
}

/* ---- main ---------------------------------------------------------------------- */

static const tk_case cases[] = {
    {"segment layout and slot pointers", test_layout},
    {"segment check: magic, layout, size", test_check},
    {"slot resets zero every field", test_resets},
    {"gv_now_ms is CLOCK_MONOTONIC in ms", test_now_ms},
    {"real POSIX segment shared with a child", test_real_segment},
    {"max_requests breaker", test_rq_breaker},
    {"max_connections and max_pending_requests", test_cx_and_pending_breakers},
    {"max_retries and the retry budget", test_retry_breaker},
    {"outlier detection off: nothing tracked", test_outlier_disabled},
    {"consecutive_5xx ejects at the threshold", test_outlier_5xx_threshold},
    {"consecutive_gateway_failure and attribution", test_outlier_gateway_threshold},
    {"max_ejection_percent cap, at least one", test_outlier_ejection_cap},
    {"ejection multiplier grows to its cap", test_outlier_multiplier},
    {"uneject_due when the ejection ends", test_uneject_due},
    {"multiplier decays after base_ejection_ms", test_multiplier_decay},
    {"health verdicts and availability", test_set_health},
    {"token bucket: full, take, fill, cap", test_bucket_basic},
    {"token bucket: epoch 0, zero rates, clamps, clocks", test_bucket_edges},
    {"retry_on table", test_retry_wanted},
    {"backoff bounds and jitter", test_backoff},
    {"idempotent methods", test_method_idempotent},
    {"4 processes: max_requests never passed", test_mp_rq_breaker},
    {"4 processes: one epoch, exactly max_tokens", test_mp_bucket_one_epoch},
    {"4 processes: 20 epochs, exactly one fill each", test_mp_bucket_epochs},
    {"4 processes: ejections capped, counts exact", test_mp_ejection},
    {"ledger: reclaim undoes a dead worker's holdings", test_ledger_reclaim},
};

int main(void)
{
    tk_run_cases(cases, TK_NELEM(cases));
    return tk_finish();
}
