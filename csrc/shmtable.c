/* shmtable.c - shared-memory segments: the routing table and the counters.
 * The contract of every function is in shmtable.h.
 *
 * Memory ordering of the table seqlock (one writer, many readers):
 *
 *   writer                                  reader
 *   g = generation            (relaxed)     g1 = generation            (acquire)
 *   generation = g + 1        (relaxed)     a  = active                (acquire)
 *   fence                     (release)     n  = length[a]             (relaxed)
 *   memcpy(slot[s], data)                   memcpy(out, slot[a], n)
 *   length[s] = len           (relaxed)     fence                      (acquire)
 *   active = s                (release)     g2 = generation            (relaxed)
 *   generation = g + 2        (release)     accept iff g2 <= (g1 & ~1) + 2
 *
 * If any byte the reader copied was written by a publish that started after
 * g1 was loaded, the writer's release fence and the reader's acquire fence
 * synchronise, so the odd store of that publish is visible to the g2 load
 * and the copy is rejected. The slot read at g1 is rewritten at the earliest
 * by the publish that stores (g1 & ~1) + 3, hence the acceptance bound.
 *
 * Every publish flips `active`, and both start at 0, so the slot published
 * at even generation E is always (E / 2) & 1. The reader uses that to name
 * the generation of the slot it copied exactly, even when it saw a publish
 * in progress (g1 odd) or saw the flip of the next one (see slot_generation).
 */
#include "shmtable.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FP_PAGE 4096u
#define FP_READ_TRIES 1000

/* C99 has no _Static_assert: a negative array size fails the build instead. */
#define FP_STATIC_ASSERT(cond, tag) typedef char fp_static_assert_##tag[(cond) ? 1 : -1]
FP_STATIC_ASSERT(sizeof(fp_table_hdr) <= FP_SHM_HEADER_BYTES, table_hdr_fits);
FP_STATIC_ASSERT(sizeof(fp_counters_hdr) <= FP_SHM_HEADER_BYTES, counters_hdr_fits);
FP_STATIC_ASSERT(sizeof(fp_worker_hdr) == 64, worker_hdr_is_64_bytes);
FP_STATIC_ASSERT(FP_SHM_HEADER_BYTES % FP_PAGE == 0, regions_page_aligned);

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield" ::: "memory");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

/* ---- POSIX shared memory ---- */

int fp_shm_create(const char *name, size_t size, void **out)
{
    int fd, err;
    void *p;

    if (name == NULL || out == NULL || size == 0 || size > (size_t)LLONG_MAX)
        return -EINVAL;
    *out = NULL;
    fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        err = errno;
        goto fail;
    }
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        err = errno;
        goto fail;
    }
    close(fd);
    *out = p;
    return 0;

fail:
    close(fd);
    shm_unlink(name); /* we created it (O_EXCL), so it is ours to remove */
    return -err;
}

int fp_shm_open(const char *name, int writable, void **out, size_t *size_out)
{
    struct stat st;
    int fd, err;
    void *p;

    if (name == NULL || out == NULL || size_out == NULL)
        return -EINVAL;
    *out = NULL;
    *size_out = 0;
    fd = shm_open(name, writable ? O_RDWR : O_RDONLY, 0);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) < 0) {
        err = errno;
        close(fd);
        return -err;
    }
    /* Zero-sized: created but not truncated yet (or not ours); nothing to map. */
    if (st.st_size <= 0 || (unsigned long long)st.st_size > (unsigned long long)SIZE_MAX) {
        close(fd);
        return -EINVAL;
    }
    p = mmap(NULL, (size_t)st.st_size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
             MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        err = errno;
        close(fd);
        return -err;
    }
    close(fd);
    *out = p;
    *size_out = (size_t)st.st_size;
    return 0;
}

int fp_shm_unmap(void *base, size_t size)
{
    if (base == NULL || size == 0)
        return -EINVAL;
    return munmap(base, size) < 0 ? -errno : 0;
}

int fp_shm_unlink(const char *name)
{
    if (name == NULL)
        return -EINVAL;
    return shm_unlink(name) < 0 ? -errno : 0;
}

/* ---- table ---- */

static inline unsigned char *table_slot(const void *base, uint64_t capacity, uint64_t slot)
{
    return (unsigned char *)base + FP_SHM_HEADER_BYTES + slot * capacity;
}

size_t fp_table_segment_size(size_t capacity)
{
    if (capacity > (SIZE_MAX - FP_SHM_HEADER_BYTES) / 2)
        return 0;
    return FP_SHM_HEADER_BYTES + 2 * capacity;
}

int fp_table_init(void *base, size_t size, size_t capacity)
{
    fp_table_hdr *h = base;
    size_t need = fp_table_segment_size(capacity);

    if (base == NULL || capacity == 0 || need == 0 || size < need)
        return -EINVAL;
    h->layout_version = FP_SHM_LAYOUT_VERSION;
    h->reserved = 0;
    h->capacity = capacity;
    h->generation = 0;
    h->active = 0;
    h->length[0] = 0;
    h->length[1] = 0;
    /* The magic goes last: a reader that sees it sees a complete header. */
    __atomic_store_n(&h->magic, FP_TABLE_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int fp_table_check(const void *base, size_t size)
{
    const fp_table_hdr *h = base;
    uint64_t cap;
    size_t need;

    if (base == NULL || size < FP_SHM_HEADER_BYTES)
        return -EINVAL;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != FP_TABLE_MAGIC)
        return -EINVAL;
    if (h->layout_version != FP_SHM_LAYOUT_VERSION)
        return -EINVAL;
    cap = h->capacity;
    if (cap == 0 || cap > SIZE_MAX)
        return -EINVAL;
    need = fp_table_segment_size((size_t)cap);
    if (need == 0 || need > size)
        return -EINVAL;
    if (__atomic_load_n(&h->active, __ATOMIC_RELAXED) > 1)
        return -EINVAL;
    return 0;
}

uint64_t fp_table_generation(const void *base)
{
    return __atomic_load_n(&((const fp_table_hdr *)base)->generation, __ATOMIC_ACQUIRE);
}

int64_t fp_table_publish(void *base, const void *data, size_t len)
{
    fp_table_hdr *h = base;
    uint64_t g, slot;

    if (len > h->capacity)
        return -E2BIG;
    if (len > 0 && data == NULL)
        return -EINVAL;

    g = __atomic_load_n(&h->generation, __ATOMIC_RELAXED); /* we are the only writer */
    if (g & 1) {
        /* A previous writer died mid-publish. If it had flipped `active`, its
         * slot is complete and readers may already be using it: finish that
         * publish first. Otherwise its slot was never visible: redo it under
         * the odd generation already stored. */
        if (__atomic_load_n(&h->active, __ATOMIC_RELAXED) == (((g + 1) >> 1) & 1)) {
            __atomic_store_n(&h->generation, g + 1, __ATOMIC_RELEASE);
            g += 1;
            __atomic_store_n(&h->generation, g + 1, __ATOMIC_RELAXED);
            __atomic_thread_fence(__ATOMIC_RELEASE);
        } else {
            g -= 1;
        }
    } else {
        __atomic_store_n(&h->generation, g + 1, __ATOMIC_RELAXED);
        __atomic_thread_fence(__ATOMIC_RELEASE);
    }

    slot = ((g + 2) >> 1) & 1; /* the inactive slot */
    if (len > 0)
        memcpy(table_slot(base, h->capacity, slot), data, len);
    __atomic_store_n(&h->length[slot], (uint64_t)len, __ATOMIC_RELAXED);
    __atomic_store_n(&h->active, slot, __ATOMIC_RELEASE);
    __atomic_store_n(&h->generation, g + 2, __ATOMIC_RELEASE);
    return (int64_t)(g + 2);
}

/* The even generation whose publish put slot `a` in place, given that the
 * reader loaded g1 before it loaded `active`. Consecutive even generations
 * use alternate slots, so exactly one of the two candidates matches. */
static inline uint64_t slot_generation(uint64_t g1, uint64_t a)
{
    uint64_t base = g1 & ~(uint64_t)1;
    return (((base >> 1) & 1) == a) ? base : base + 2;
}

int64_t fp_table_read(const void *base, void *out, size_t cap, uint64_t *gen_out)
{
    const fp_table_hdr *h = base;
    const uint64_t capacity = h->capacity; /* written once, before the magic */
    uint64_t g1, g2, a, n;
    int tries;

    if (cap > 0 && out == NULL)
        return -EINVAL;
    for (tries = 0; tries < FP_READ_TRIES; tries++) {
        if (tries > 0)
            cpu_relax();
        g1 = __atomic_load_n(&h->generation, __ATOMIC_ACQUIRE);
        a = __atomic_load_n(&h->active, __ATOMIC_ACQUIRE);
        if (a > 1)
            return -EINVAL; /* 8-byte loads never tear: the header is corrupt */
        n = __atomic_load_n(&h->length[a], __ATOMIC_RELAXED);
        if (n > capacity)
            continue; /* inconsistent; never copy past the slot */
        if (n > cap) {
            /* Only report E2BIG for a length that was really published. */
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            g2 = __atomic_load_n(&h->generation, __ATOMIC_RELAXED);
            if (g2 <= (g1 & ~(uint64_t)1) + 2)
                return -E2BIG;
            continue;
        }
        if (n > 0)
            memcpy(out, table_slot(base, capacity, a), (size_t)n);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        g2 = __atomic_load_n(&h->generation, __ATOMIC_RELAXED);
        if (g2 <= (g1 & ~(uint64_t)1) + 2) {
            if (gen_out != NULL)
                *gen_out = slot_generation(g1, a);
            return (int64_t)n;
        }
    }
    return -EAGAIN;
}

/* ---- counters ---- */

size_t fp_counters_region_bytes(uint64_t nslots)
{
    uint64_t bytes;

    if (nslots > (SIZE_MAX - sizeof(fp_worker_hdr) - (FP_PAGE - 1)) / sizeof(uint64_t))
        return 0;
    bytes = sizeof(fp_worker_hdr) + nslots * sizeof(uint64_t);
    return (size_t)((bytes + (FP_PAGE - 1)) & ~(uint64_t)(FP_PAGE - 1));
}

size_t fp_counters_segment_size(uint32_t nworkers, uint64_t nslots)
{
    size_t region = fp_counters_region_bytes(nslots);

    if (region == 0 || nworkers == 0)
        return 0;
    if (nworkers > (SIZE_MAX - FP_SHM_HEADER_BYTES) / region)
        return 0;
    return FP_SHM_HEADER_BYTES + (size_t)nworkers * region;
}

int fp_counters_init(void *base, size_t size, uint32_t nworkers, uint64_t nslots)
{
    fp_counters_hdr *h = base;
    size_t need = fp_counters_segment_size(nworkers, nslots);

    if (base == NULL || need == 0 || size < need)
        return -EINVAL;
    h->layout_version = FP_SHM_LAYOUT_VERSION;
    h->nworkers = nworkers;
    h->nslots = nslots;
    h->region_bytes = fp_counters_region_bytes(nslots);
    __atomic_store_n(&h->magic, FP_COUNTERS_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

int fp_counters_check(const void *base, size_t size)
{
    const fp_counters_hdr *h = base;
    size_t need;

    if (base == NULL || size < FP_SHM_HEADER_BYTES)
        return -EINVAL;
    if (__atomic_load_n(&h->magic, __ATOMIC_ACQUIRE) != FP_COUNTERS_MAGIC)
        return -EINVAL;
    if (h->layout_version != FP_SHM_LAYOUT_VERSION)
        return -EINVAL;
    need = fp_counters_segment_size(h->nworkers, h->nslots);
    if (need == 0 || need > size)
        return -EINVAL;
    if (h->region_bytes != fp_counters_region_bytes(h->nslots))
        return -EINVAL;
    return 0;
}

/* NULL when worker >= nworkers. */
fp_worker_hdr *fp_counters_worker(void *base, uint32_t worker)
{
    const fp_counters_hdr *h = base;

    if (worker >= h->nworkers)
        return NULL;
    return (fp_worker_hdr *)((unsigned char *)base + FP_SHM_HEADER_BYTES +
                             (size_t)worker * h->region_bytes);
}

/* NULL when worker >= nworkers. */
uint64_t *fp_counters_slots(void *base, uint32_t worker)
{
    fp_worker_hdr *w = fp_counters_worker(base, worker);

    return w == NULL ? NULL : (uint64_t *)(w + 1);
}

void fp_counters_sum(const void *base, uint64_t *out, uint64_t n)
{
    const fp_counters_hdr *h = base;
    const unsigned char *region = (const unsigned char *)base + FP_SHM_HEADER_BYTES;
    uint32_t w;
    uint64_t i;

    if (n > h->nslots)
        n = h->nslots;
    for (i = 0; i < n; i++)
        out[i] = 0;
    for (w = 0; w < h->nworkers; w++, region += h->region_bytes) {
        const uint64_t *c = (const uint64_t *)(region + sizeof(fp_worker_hdr));
        for (i = 0; i < n; i++)
            out[i] += __atomic_load_n(&c[i], __ATOMIC_RELAXED);
    }
}
