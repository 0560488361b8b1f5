/* shmtable.h - shared-memory segments: the routing table and the counters.
 *
 * TABLE SEGMENT (one writer: the manager; many readers: the workers)
 *   [header: 4096 bytes][slot 0: capacity bytes][slot 1: capacity bytes]
 *   The writer fills the INACTIVE slot, then flips `active`. `generation` is a
 *   seqlock counter: odd while a publish is in progress, +2 per publish.
 *   A slot that was active at generation g (even) is not written again before
 *   generation g+3, so a reader that saw g1 at the start and g2 at the end of
 *   its copy holds an intact slot iff g2 <= (g1 & ~1) + 2. Readers therefore
 *   almost never retry, and never see a half-written table.
 *
 * COUNTER SEGMENT (each worker region has exactly one writer)
 *   [header: 4096 bytes][region 0][region 1]...[region nworkers-1]
 *   region = [fp_worker_hdr: 64 bytes][uint64 counters[nslots]] rounded up to
 *   a multiple of 4096. A worker writes only its own region, with relaxed
 *   atomic stores; the manager sums the regions with relaxed loads.
 *
 * All functions return 0 or a negative errno unless stated otherwise.
 */
#ifndef FASTPROXY_SHMTABLE_H
#define FASTPROXY_SHMTABLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FP_TABLE_MAGIC    0x3142545046ULL /* "FPTB1" little-endian */
#define FP_COUNTERS_MAGIC 0x3143545046ULL /* "FPTC1" */
#define FP_SHM_LAYOUT_VERSION 1u
#define FP_SHM_HEADER_BYTES 4096u

typedef struct fp_table_hdr {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t reserved;
    uint64_t capacity;      /* bytes per slot */
    uint64_t generation;    /* seqlock; 0 = nothing published yet */
    uint64_t active;        /* 0 or 1: the published slot */
    uint64_t length[2];     /* bytes used in each slot */
} fp_table_hdr;

typedef struct fp_worker_hdr {  /* exactly 64 bytes */
    uint64_t pid;               /* 0 = no worker */
    uint64_t applied_generation;/* table generation whose listeners this worker has bound */
    uint64_t draining;          /* 1 once the worker stopped accepting */
    uint64_t heartbeat;         /* bumped by the worker periodically */
    uint64_t reserved[4];
} fp_worker_hdr;

typedef struct fp_counters_hdr {
    uint64_t magic;
    uint32_t layout_version;
    uint32_t nworkers;
    uint64_t nslots;
    uint64_t region_bytes;
} fp_counters_hdr;

/* ---- POSIX shared memory (names as for shm_open: "/fastproxy-123-table") ---- */

/* Creates (O_EXCL) and maps a zero-filled segment of `size` bytes read-write.
 * On success *out points at the mapping. */
int fp_shm_create(const char *name, size_t size, void **out);
/* Maps an existing segment; *size_out receives its size. */
int fp_shm_open(const char *name, int writable, void **out, size_t *size_out);
int fp_shm_unmap(void *base, size_t size);
int fp_shm_unlink(const char *name);

/* ---- table ---- */

/* Total segment size for slots of `capacity` bytes. */
size_t fp_table_segment_size(size_t capacity);
/* Writes the header into a zeroed mapping of fp_table_segment_size(capacity). */
int fp_table_init(void *base, size_t size, size_t capacity);
/* Validates magic, layout version and that the slots fit in `size`: 0 or -EINVAL. */
int fp_table_check(const void *base, size_t size);
/* The current generation (one acquire load). */
uint64_t fp_table_generation(const void *base);
/* Single writer. Copies data into the inactive slot and publishes it.
 * Returns the new (even) generation, or -E2BIG if len > capacity. */
int64_t fp_table_publish(void *base, const void *data, size_t len);
/* Copies the published slot into out (cap bytes). Returns its length and
 * stores its generation in *gen_out; 0 with *gen_out = 0 when nothing is
 * published; -E2BIG if cap is too small; -EAGAIN after 1000 torn reads. */
int64_t fp_table_read(const void *base, void *out, size_t cap, uint64_t *gen_out);

/* ---- counters ---- */

size_t fp_counters_region_bytes(uint64_t nslots);
size_t fp_counters_segment_size(uint32_t nworkers, uint64_t nslots);
int fp_counters_init(void *base, size_t size, uint32_t nworkers, uint64_t nslots);
int fp_counters_check(const void *base, size_t size);
fp_worker_hdr *fp_counters_worker(void *base, uint32_t worker);
uint64_t *fp_counters_slots(void *base, uint32_t worker);
/* out[i] = sum over workers of slot i, for i < n (n <= nslots). */
void fp_counters_sum(const void *base, uint64_t *out, uint64_t n);

/* Single-writer increment of a counter in this process's own region. */
static inline void fp_counter_add(uint64_t *c, uint64_t n) {
    __atomic_store_n(c, __atomic_load_n(c, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

#endif
