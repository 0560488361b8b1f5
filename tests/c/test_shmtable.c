/* test_shmtable.c - csrc/shmtable.c under ASan/UBSan.
 *
 * A table of cases; each prints "<name> ok" or "<name> FAIL" (with the failed
 * check above it). The last line is "N passed, M failed"; the exit status is
 * nonzero if any case failed. Every segment is named
 * "/fastproxy-test-<pid>-<tag>" and removed; the last case checks /dev/shm.
 */
#include "testkit.h"

#include "shmtable.h"

#include <signal.h>
#include <sys/wait.h>

static char g_prefix[64]; /* "fastproxy-test-<pid>-" */

static const char *shm_name(const char *tag)
{
    static char buf[8][128];
    static int next;
    char *b = buf[next++ % 8];

    snprintf(b, sizeof(buf[0]), "/%s%s", g_prefix, tag);
    return b;
}

/* A table segment created, initialised and ready; unlinked by table_close. */
struct table {
    const char *name;
    void *base;
    size_t size;
};

static int table_open(struct table *t, const char *tag, size_t capacity)
{
    t->name = shm_name(tag);
    t->size = fp_table_segment_size(capacity);
    fp_shm_unlink(t->name); /* a leftover of an earlier crashed run with our pid */
    if (fp_shm_create(t->name, t->size, &t->base) != 0)
        return -1;
    return fp_table_init(t->base, t->size, capacity);
}

static void table_close(struct table *t)
{
    if (t->base != NULL)
        fp_shm_unmap(t->base, t->size);
    fp_shm_unlink(t->name);
    t->base = NULL;
}

/* ---- segments ---- */

static int test_create_open_unlink(void)
{
    const char *name = shm_name("life");
    void *w = NULL, *r = NULL, *x = NULL;
    size_t size = fp_table_segment_size(1000), rsize = 0;
    size_t i;
    const unsigned char *bytes;

    fp_shm_unlink(name);
    CHECK_EQ(fp_shm_create(name, size, &w), 0);
    CHECK(w != NULL);
    bytes = w;
    for (i = 0; i < size; i++)
        CHECK(bytes[i] == 0);
    CHECK_EQ(fp_shm_create(name, size, &x), -EEXIST);
    CHECK(x == NULL);
    CHECK_EQ(fp_table_check(w, size), -EINVAL); /* not initialised yet */
    CHECK_EQ(fp_table_init(w, size, 1000), 0);
    CHECK_EQ(fp_table_check(w, size), 0);

    CHECK_EQ(fp_shm_open(name, 0, &r, &rsize), 0);
    CHECK_EQ(rsize, size);
    CHECK_EQ(fp_table_check(r, rsize), 0);
    CHECK_EQ(fp_table_generation(r), 0);
    CHECK_EQ(((const fp_table_hdr *)r)->capacity, 1000);
    CHECK_EQ(fp_shm_unmap(r, rsize), 0);

    CHECK_EQ(fp_shm_unmap(w, size), 0);
    CHECK_EQ(fp_shm_unlink(name), 0);
    CHECK_EQ(fp_shm_unlink(name), -ENOENT);
    CHECK_EQ(fp_shm_open(name, 0, &r, &rsize), -ENOENT);
    CHECK(r == NULL);
    return 0;
}

static int test_create_bad_args(void)
{
    void *p = (void *)1;
    size_t sz = 1;

    CHECK_EQ(fp_shm_create(shm_name("zero"), 0, &p), -EINVAL);
    CHECK_EQ(fp_shm_create(NULL, 4096, &p), -EINVAL);
    CHECK_EQ(fp_shm_create("/bad/name", 4096, &p), -EINVAL);
    CHECK_EQ(fp_shm_open(NULL, 0, &p, &sz), -EINVAL);
    CHECK_EQ(fp_shm_unmap(NULL, 4096), -EINVAL);
    CHECK_EQ(fp_table_segment_size(SIZE_MAX / 2), 0);
    CHECK_EQ(fp_counters_segment_size(0, 10), 0);
    CHECK_EQ(fp_counters_segment_size(UINT32_MAX, UINT64_MAX / 4), 0);
    CHECK_EQ(fp_counters_region_bytes(UINT64_MAX), 0);
    return 0;
}

static int test_open_empty_segment(void)
{
    /* Created but not truncated yet: open refuses rather than map 0 bytes. */
    const char *name = shm_name("empty");
    void *p = NULL;
    size_t sz = 0;
    int fd;

    fp_shm_unlink(name);
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    CHECK(fd >= 0);
    close(fd);
    CHECK_EQ(fp_shm_open(name, 0, &p, &sz), -EINVAL);
    CHECK(p == NULL);
    CHECK_EQ(fp_shm_unlink(name), 0);
    return 0;
}

static int test_table_header_rejected(void)
{
    struct table t;
    fp_table_hdr *h;

    CHECK_EQ(table_open(&t, "hdr", 512), 0);
    h = t.base;
    CHECK_EQ(fp_table_check(t.base, t.size), 0);
    CHECK_EQ(fp_table_check(t.base, t.size - 1), -EINVAL);     /* slots don't fit */
    CHECK_EQ(fp_table_check(t.base, 100), -EINVAL);            /* no room for the header */
    CHECK_EQ(fp_table_check(NULL, t.size), -EINVAL);

    h->magic ^= 1;
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->magic ^= 1;
    h->magic = FP_COUNTERS_MAGIC;                              /* the other kind */
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->magic = FP_TABLE_MAGIC;

    h->layout_version = FP_SHM_LAYOUT_VERSION + 1;
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->layout_version = FP_SHM_LAYOUT_VERSION;

    h->capacity = 513;                                         /* claims more than mapped */
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->capacity = 0;
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->capacity = UINT64_MAX;                                  /* overflowing size */
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->capacity = 512;

    h->active = 2;
    CHECK_EQ(fp_table_check(t.base, t.size), -EINVAL);
    h->active = 0;
    CHECK_EQ(fp_table_check(t.base, t.size), 0);

    CHECK_EQ(fp_table_init(t.base, t.size, 513), -EINVAL);    /* mapping too small */
    CHECK_EQ(fp_table_init(t.base, t.size, 0), -EINVAL);
    table_close(&t);
    return 0;
}

/* ---- table ---- */

static int test_table_round_trip(void)
{
    struct table t;
    unsigned char out[300], data[300];
    uint64_t gen = 99;
    int64_t n;
    int i, round;

    CHECK_EQ(table_open(&t, "rt", 300), 0);
    n = fp_table_read(t.base, out, sizeof(out), &gen);
    CHECK_EQ(n, 0);
    CHECK_EQ(gen, 0);                                          /* nothing published */

    for (round = 1; round <= 5; round++) {
        size_t len = (size_t)(round * 60);
        for (i = 0; i < (int)len; i++)
            data[i] = (unsigned char)(i * 31 + round);
        CHECK_EQ(fp_table_publish(t.base, data, len), 2 * round);
        CHECK_EQ(fp_table_generation(t.base), 2 * round);
        CHECK_EQ(((fp_table_hdr *)t.base)->active, round & 1);
        memset(out, 0xEE, sizeof(out));
        n = fp_table_read(t.base, out, sizeof(out), &gen);
        CHECK_EQ(n, (int64_t)len);
        CHECK_EQ(gen, 2 * round);
        CHECK(memcmp(out, data, len) == 0);
        if (len < sizeof(out))
            CHECK(out[len] == 0xEE);                            /* nothing beyond n */
    }
    /* an empty table is a valid publish */
    CHECK_EQ(fp_table_publish(t.base, NULL, 0), 12);
    n = fp_table_read(t.base, NULL, 0, &gen);
    CHECK_EQ(n, 0);
    CHECK_EQ(gen, 12);
    /* gen_out may be NULL */
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), NULL), 0);
    table_close(&t);
    return 0;
}

static int test_table_e2big(void)
{
    struct table t;
    unsigned char data[129], out[128];
    uint64_t gen = 7;

    memset(data, 'x', sizeof(data));
    CHECK_EQ(table_open(&t, "big", 128), 0);
    /* writer: one byte over capacity is refused and changes nothing */
    CHECK_EQ(fp_table_publish(t.base, data, 129), -E2BIG);
    CHECK_EQ(fp_table_generation(t.base), 0);
    CHECK_EQ(fp_table_publish(t.base, data, 128), 2);          /* exactly capacity fits */
    /* reader: a buffer one byte short is refused and left untouched */
    memset(out, 0, sizeof(out));
    CHECK_EQ(fp_table_read(t.base, out, 127, &gen), -E2BIG);
    CHECK_EQ(out[0], 0);
    CHECK_EQ(fp_table_read(t.base, out, 128, &gen), 128);
    CHECK_EQ(gen, 2);
    table_close(&t);
    return 0;
}

static int test_table_read_guard_page(void)
{
    /* The reader's buffer ends right before a PROT_NONE page: any write past
     * n bytes faults, with or without the sanitizers. */
    struct table t;
    tk_guard mem;
    unsigned char *out, data[1000];
    uint64_t gen;
    size_t len;

    CHECK_EQ(table_open(&t, "guard", 1000), 0);
    CHECK_EQ(tk_guard_map(&mem, 1000), 0);                     /* one page, then the guard */
    for (len = 1; len <= 1000; len += 111) {
        memset(data, (int)len, len);
        CHECK(fp_table_publish(t.base, data, len) > 0);
        out = (unsigned char *)tk_guard_at(&mem, len);
        CHECK_EQ(fp_table_read(t.base, out, len, &gen), (int64_t)len);
        CHECK(memcmp(out, data, len) == 0);
    }
    tk_guard_unmap(&mem);
    table_close(&t);
    return 0;
}

static int test_table_stalled_writer(void)
{
    /* Readers never wait for a writer stuck mid-publish (odd generation), and
     * always name the generation of the slot they copied. Here we play the
     * writer by hand, stopping it at each step. */
    struct table t;
    fp_table_hdr *h;
    unsigned char *slot1, out[16];
    uint64_t gen;

    CHECK_EQ(table_open(&t, "stall", 16), 0);
    h = t.base;
    CHECK_EQ(fp_table_publish(t.base, "AAAA", 4), 2);          /* slot 1 active */
    slot1 = (unsigned char *)t.base + FP_SHM_HEADER_BYTES + 16;

    h->generation = 3;                                         /* publish of gen 4 begun */
    memcpy((unsigned char *)t.base + FP_SHM_HEADER_BYTES, "BBBBBB", 6);  /* into slot 0 */
    h->length[0] = 6;
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), 4);
    CHECK_EQ(gen, 2);                                          /* still the old table */
    CHECK(memcmp(out, "AAAA", 4) == 0);

    h->active = 0;                                             /* flipped, gen still odd */
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), 6);
    CHECK_EQ(gen, 4);                                          /* the new table, named right */
    CHECK(memcmp(out, "BBBBBB", 6) == 0);

    /* The writer died here. The next publish completes gen 4 and goes on. */
    CHECK_EQ(fp_table_publish(t.base, "CC", 2), 6);
    CHECK_EQ(h->active, 1);
    CHECK(memcmp(slot1, "CC", 2) == 0);
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), 2);
    CHECK_EQ(gen, 6);

    /* Died before the flip: the half-written slot is never shown, and the
     * next publish reuses it under the same odd generation. */
    h->generation = 7;
    memcpy((unsigned char *)t.base + FP_SHM_HEADER_BYTES, "garbage", 7);
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), 2);
    CHECK_EQ(gen, 6);
    CHECK_EQ(fp_table_publish(t.base, "DDD", 3), 8);
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), 3);
    CHECK_EQ(gen, 8);
    CHECK(memcmp(out, "DDD", 3) == 0);

    /* First publish stalled: readers still see "nothing published". */
    table_close(&t);
    CHECK_EQ(table_open(&t, "stall", 16), 0);
    h = t.base;
    h->generation = 1;
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), 0);
    CHECK_EQ(gen, 0);
    table_close(&t);
    return 0;
}

static int test_table_corrupt_length(void)
{
    /* A length over capacity is never trusted: the read retries, then gives up. */
    struct table t;
    unsigned char out[64];
    uint64_t gen;

    CHECK_EQ(table_open(&t, "badlen", 32), 0);
    CHECK_EQ(fp_table_publish(t.base, "abc", 3), 2);
    ((fp_table_hdr *)t.base)->length[1] = 33;
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), -EAGAIN);
    ((fp_table_hdr *)t.base)->active = 5;
    CHECK_EQ(fp_table_read(t.base, out, sizeof(out), &gen), -EINVAL);
    table_close(&t);
    return 0;
}

/* ---- torture: one writer, forked readers ---- */

#define TORTURE_CAP       (64 * 1024)
#define TORTURE_MIN_PUBLISHES 20000      /* at least this many ...          */
#define TORTURE_RUN_SECONDS   1.5        /* ... for at least this long ...   */
#define TORTURE_MIN_DISTINCT  100        /* ... until each reader saw this many generations, */
#define TORTURE_MAX_PUBLISHES 10000000   /* ... but never more than this     */
#define TORTURE_READERS       3
#define TORTURE_SECONDS       20.0       /* hard deadline for everyone       */

/* Publish i (from 0) gets generation 2(i+1), every byte = torture_byte(i) and
 * torture_len(i) bytes, so a reader checks a copy against the generation
 * fp_table_read reports for it. Big and tiny tables alternate: while a reader
 * copies a big one, the writer publishes a tiny one and starts overwriting
 * the big one's slot, the very race the seqlock has to catch. */
static size_t torture_len(uint64_t i)
{
    if (i % 2 == 0)
        return TORTURE_CAP - (size_t)((i * 2654435761u) % 4096);
    return 1 + (size_t)(i % 61);
}

static unsigned char torture_byte(uint64_t i)
{
    return (unsigned char)(i * 37 + 11);
}

struct torture_shared {
    volatile int ready;               /* readers that have started */
    volatile int stop;                /* set by the writer when done */
    struct {
        uint64_t reads, bad, eagain, backwards, distinct, last_gen;
    } r[TORTURE_READERS];
};

static void torture_reader(const char *name, struct torture_shared *sh, int id)
{
    void *base;
    size_t size;
    unsigned char *out = malloc(TORTURE_CAP);
    uint64_t gen, prev = 0;
    double deadline = tk_now() + TORTURE_SECONDS;
    int64_t n;

    if (out == NULL || fp_shm_open(name, 0, &base, &size) != 0 || fp_table_check(base, size) != 0)
        _exit(2);
    __atomic_add_fetch(&sh->ready, 1, __ATOMIC_SEQ_CST);
    while (!__atomic_load_n(&sh->stop, __ATOMIC_ACQUIRE) && tk_now() < deadline) {
        n = fp_table_read(base, out, TORTURE_CAP, &gen);
        if (n == -EAGAIN) {
            sh->r[id].eagain++;
            continue;
        }
        sh->r[id].reads++;
        if (n < 0 || (gen & 1)) {
            sh->r[id].bad++;
            continue;
        }
        if (gen < prev)
            sh->r[id].backwards++;
        if (gen != prev)
            sh->r[id].distinct++;
        prev = gen;
        if (gen == 0) {
            if (n != 0)
                sh->r[id].bad++;
            continue;
        }
        {
            uint64_t i = gen / 2 - 1;
            unsigned char v = torture_byte(i);
            size_t k;
            if ((size_t)n != torture_len(i)) {
                sh->r[id].bad++;
                continue;
            }
            for (k = 0; k < (size_t)n; k++) {
                if (out[k] != v) {
                    sh->r[id].bad++;
                    break;
                }
            }
        }
    }
    sh->r[id].last_gen = prev;
    free(out);
    _exit(0);
}

static int test_table_torture_forked_readers(void)
{
    struct table t;
    struct torture_shared *sh;
    pid_t pids[TORTURE_READERS];
    unsigned char *data;
    double deadline, run_end;
    uint64_t i, reads = 0, eagain = 0;
    int k, status, failed = 0;

    CHECK_EQ(table_open(&t, "torture", TORTURE_CAP), 0);
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(sh != MAP_FAILED);
    memset(sh, 0, sizeof(*sh));
    data = malloc(TORTURE_CAP);
    CHECK(data != NULL);

    fflush(NULL);
    for (k = 0; k < TORTURE_READERS; k++) {
        pids[k] = fork();
        CHECK(pids[k] >= 0);
        if (pids[k] == 0)
            torture_reader(t.name, sh, k);
    }
    deadline = tk_now() + TORTURE_SECONDS;
    while (__atomic_load_n(&sh->ready, __ATOMIC_SEQ_CST) < TORTURE_READERS && tk_now() < deadline)
        usleep(1000);

    run_end = tk_now() + TORTURE_RUN_SECONDS;
    for (i = 0; i < TORTURE_MAX_PUBLISHES; i++) {
        double t_now = tk_now();
        if (t_now > deadline)
            break;
        if (i >= TORTURE_MIN_PUBLISHES && t_now > run_end && (i & 1023) == 0) {
            /* a loaded machine may starve a reader: go on until each one raced us */
            for (k = 0; k < TORTURE_READERS; k++)
                if (__atomic_load_n(&sh->r[k].distinct, __ATOMIC_RELAXED) < TORTURE_MIN_DISTINCT)
                    break;
            if (k == TORTURE_READERS)
                break;
        }
        memset(data, torture_byte(i), torture_len(i));
        if (fp_table_publish(t.base, data, torture_len(i)) != (int64_t)(2 * (i + 1))) {
            fprintf(stderr, "  publish %llu failed\n", (unsigned long long)i);
            failed = 1;
            break;
        }
    }
    __atomic_store_n(&sh->stop, 1, __ATOMIC_RELEASE);

    for (k = 0; k < TORTURE_READERS; k++) {
        /* bounded: readers stop on `stop` or their own deadline */
        while (waitpid(pids[k], &status, WNOHANG) == 0) {
            if (tk_now() > deadline + 10) {
                kill(pids[k], SIGKILL);
                waitpid(pids[k], &status, 0);
                fprintf(stderr, "  reader %d hung\n", k);
                failed = 1;
                break;
            }
            usleep(1000);
        }
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "  reader %d exited with status %d\n", k, status);
            failed = 1;
        }
        fprintf(stderr, "  reader %d: %llu reads, %llu generations, %llu EAGAIN, "
                "%llu torn, %llu backwards\n", k,
                (unsigned long long)sh->r[k].reads, (unsigned long long)sh->r[k].distinct,
                (unsigned long long)sh->r[k].eagain, (unsigned long long)sh->r[k].bad,
                (unsigned long long)sh->r[k].backwards);
        if (sh->r[k].bad != 0 || sh->r[k].backwards != 0)
            failed = 1;
        if (sh->r[k].distinct < TORTURE_MIN_DISTINCT) /* it really raced the writer */
            failed = 1;
        reads += sh->r[k].reads;
        eagain += sh->r[k].eagain;
    }
    fprintf(stderr, "  writer: %llu publishes\n", (unsigned long long)i);
    free(data);
    munmap(sh, sizeof(*sh));
    table_close(&t);
    CHECK(!failed);
    CHECK(i >= TORTURE_MIN_PUBLISHES);
    CHECK(eagain * 100 <= reads);   /* retries exhausted at most 1% of the time */
    return 0;
}

/* ---- counters ---- */

static int test_counters_region_alignment(void)
{
    static const struct { uint64_t nslots; size_t bytes; } cases[] = {
        {0, 4096}, {1, 4096}, {504, 4096}, {505, 8192}, {1016, 8192}, {1017, 12288},
    };
    const char *name = shm_name("align");
    void *base;
    size_t i, size;
    uint32_t w;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        CHECK_EQ(fp_counters_region_bytes(cases[i].nslots), cases[i].bytes);
    CHECK_EQ(fp_counters_segment_size(3, 505), 4096 + 3 * 8192);

    size = fp_counters_segment_size(5, 700);
    fp_shm_unlink(name);
    CHECK_EQ(fp_shm_create(name, size, &base), 0);
    CHECK_EQ(fp_counters_init(base, size, 5, 700), 0);
    CHECK(((uintptr_t)base % 4096) == 0);
    for (w = 0; w < 5; w++) {
        uintptr_t hdr = (uintptr_t)fp_counters_worker(base, w);
        uintptr_t slots = (uintptr_t)fp_counters_slots(base, w);
        CHECK_EQ((hdr - (uintptr_t)base), 4096 + w * 8192);
        CHECK(hdr % 4096 == 0);                                /* one page-aligned region each */
        CHECK_EQ(slots - hdr, 64);
        CHECK(slots % 64 == 0);
        CHECK(slots + 700 * 8 <= (uintptr_t)base + size);
    }
    CHECK(fp_counters_worker(base, 5) == NULL);
    CHECK(fp_counters_slots(base, 5) == NULL);
    fp_shm_unmap(base, size);
    CHECK_EQ(fp_shm_unlink(name), 0);
    return 0;
}

static int test_counters_header_rejected(void)
{
    const char *name = shm_name("chdr");
    fp_counters_hdr *h;
    void *base;
    size_t size = fp_counters_segment_size(2, 10);

    fp_shm_unlink(name);
    CHECK_EQ(fp_shm_create(name, size, &base), 0);
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);          /* not initialised */
    CHECK_EQ(fp_counters_init(base, size, 0, 10), -EINVAL);
    CHECK_EQ(fp_counters_init(base, size, 3, 10), -EINVAL);    /* does not fit */
    CHECK_EQ(fp_counters_init(base, size, 2, 10), 0);
    CHECK_EQ(fp_counters_check(base, size), 0);
    CHECK_EQ(fp_counters_check(base, size - 1), -EINVAL);
    h = base;
    h->magic = FP_TABLE_MAGIC;
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);
    h->magic = FP_COUNTERS_MAGIC;
    h->layout_version = 0;
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);
    h->layout_version = FP_SHM_LAYOUT_VERSION;
    h->nworkers = 3;
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);
    h->nworkers = 0;
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);
    h->nworkers = 2;
    h->region_bytes = 8192;
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);
    h->region_bytes = 4096;
    h->nslots = UINT64_MAX;
    CHECK_EQ(fp_counters_check(base, size), -EINVAL);
    h->nslots = 10;
    CHECK_EQ(fp_counters_check(base, size), 0);
    fp_shm_unmap(base, size);
    CHECK_EQ(fp_shm_unlink(name), 0);
    return 0;
}

#define CW_WORKERS 3
#define CW_SLOTS   600   /* spills over the first page of each region */
#define CW_ROUNDS  20000

static int test_counters_sum_across_workers(void)
{
    /* Three forked workers bump their own regions; the parent sums while they
     * run (sums never go backwards) and after (exact totals). */
    const char *name = shm_name("ctr");
    size_t size = fp_counters_segment_size(CW_WORKERS, CW_SLOTS);
    void *base;
    uint64_t sum[CW_SLOTS], prev[CW_SLOTS];
    pid_t pids[CW_WORKERS];
    int w, i, status, failed = 0, rounds;

    fp_shm_unlink(name);
    CHECK_EQ(fp_shm_create(name, size, &base), 0);
    CHECK_EQ(fp_counters_init(base, size, CW_WORKERS, CW_SLOTS), 0);

    fflush(NULL);
    for (w = 0; w < CW_WORKERS; w++) {
        pids[w] = fork();
        CHECK(pids[w] >= 0);
        if (pids[w] == 0) {
            void *b;
            size_t sz;
            uint64_t *c;
            int r;
            if (fp_shm_open(name, 1, &b, &sz) != 0 || fp_counters_check(b, sz) != 0)
                _exit(2);
            c = fp_counters_slots(b, (uint32_t)w);
            fp_counters_worker(b, (uint32_t)w)->pid = (uint64_t)getpid();
            for (r = 0; r < CW_ROUNDS; r++)
                for (i = 0; i < CW_SLOTS; i += 7)
                    fp_counter_add(&c[i], (uint64_t)(w + 1));
            _exit(0);
        }
    }
    memset(prev, 0, sizeof(prev));
    for (rounds = 0; rounds < 200; rounds++) {
        fp_counters_sum(base, sum, CW_SLOTS);
        for (i = 0; i < CW_SLOTS; i++)
            if (sum[i] < prev[i])
                failed = 1;
        memcpy(prev, sum, sizeof(sum));
    }
    for (w = 0; w < CW_WORKERS; w++) {
        CHECK(waitpid(pids[w], &status, 0) == pids[w]);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK_EQ(fp_counters_worker(base, (uint32_t)w)->pid, pids[w]);
    }
    CHECK(!failed);
    fp_counters_sum(base, sum, CW_SLOTS);
    for (i = 0; i < CW_SLOTS; i++)
        CHECK_EQ(sum[i], i % 7 == 0 ? (uint64_t)CW_ROUNDS * (1 + 2 + 3) : 0);

    /* n < nslots touches only n outputs; n > nslots is clamped */
    sum[5] = 12345;
    fp_counters_sum(base, sum, 5);
    CHECK_EQ(sum[5], 12345);
    {
        uint64_t big[CW_SLOTS + 10];
        big[CW_SLOTS] = 777;
        fp_counters_sum(base, big, CW_SLOTS + 10);
        CHECK_EQ(big[CW_SLOTS], 777);
        CHECK_EQ(big[0], (uint64_t)CW_ROUNDS * 6);
    }
    fp_shm_unmap(base, size);
    CHECK_EQ(fp_shm_unlink(name), 0);
    return 0;
}

/* Counts (and, with remove, unlinks) our segments still in /dev/shm. */
static int count_ours(int remove)
{
    DIR *d = opendir("/dev/shm");
    struct dirent *e;
    char name[300];
    int found = 0;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, g_prefix, strlen(g_prefix)) != 0)
            continue;
        found++;
        if (remove) {
            snprintf(name, sizeof(name), "/%s", e->d_name);
            shm_unlink(name);
        } else {
            fprintf(stderr, "  leftover /dev/shm/%s\n", e->d_name);
        }
    }
    closedir(d);
    return found;
}

static int test_no_leftovers(void)
{
    CHECK_EQ(count_ours(0), 0);
    return 0;
}

static const tk_case cases[] = {
    {"create, open, check, unlink", test_create_open_unlink},
    {"bad arguments and overflowing sizes", test_create_bad_args},
    {"open of a zero-sized segment", test_open_empty_segment},
    {"table header: bad magic/version/size rejected", test_table_header_rejected},
    {"table publish/read round trip", test_table_round_trip},
    {"table E2BIG (writer and reader)", test_table_e2big},
    {"table read into a buffer before a guard page", test_table_read_guard_page},
    {"table reader vs a stalled or dead writer", test_table_stalled_writer},
    {"table corrupt length/active never trusted", test_table_corrupt_length},
    {"table torture: one writer, 3 forked readers", test_table_torture_forked_readers},
    {"counters region alignment", test_counters_region_alignment},
    {"counters header: bad magic/version/size rejected", test_counters_header_rejected},
    {"counters sum across 3 forked workers", test_counters_sum_across_workers},
    {"no leftovers in /dev/shm", test_no_leftovers},
};

int main(void)
{
    snprintf(g_prefix, sizeof(g_prefix), "fastproxy-test-%ld-", (long)getpid());
    tk_run_cases(cases, TK_NELEM(cases));
    count_ours(1); /* a failed case may have returned before its unlink */
    return tk_finish();
}
