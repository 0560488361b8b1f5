# extern declarations only: csrc/shmtable.h (the contracts are written there)
from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "shmtable.h" nogil:
    enum:
        FP_SHM_HEADER_BYTES

    const unsigned long long FP_TABLE_MAGIC
    const unsigned long long FP_COUNTERS_MAGIC
    const unsigned int FP_SHM_LAYOUT_VERSION

    ctypedef struct fp_table_hdr:
        uint64_t magic
        uint32_t layout_version
        uint32_t reserved
        uint64_t capacity
        uint64_t generation
        uint64_t active
        uint64_t length[2]

    ctypedef struct fp_worker_hdr:
        uint64_t pid
        uint64_t applied_generation
        uint64_t draining
        uint64_t heartbeat
        uint64_t reserved[4]

    ctypedef struct fp_counters_hdr:
        uint64_t magic
        uint32_t layout_version
        uint32_t nworkers
        uint64_t nslots
        uint64_t region_bytes

    int fp_shm_create(const char *name, size_t size, void **out)
    int fp_shm_open(const char *name, int writable, void **out, size_t *size_out)
    int fp_shm_unmap(void *base, size_t size)
    int fp_shm_unlink(const char *name)

    size_t fp_table_segment_size(size_t capacity)
    int fp_table_init(void *base, size_t size, size_t capacity)
    int fp_table_check(const void *base, size_t size)
    uint64_t fp_table_generation(const void *base)
    int64_t fp_table_publish(void *base, const void *data, size_t len)
    int64_t fp_table_read(const void *base, void *out, size_t cap, uint64_t *gen_out)

    size_t fp_counters_region_bytes(uint64_t nslots)
    size_t fp_counters_segment_size(uint32_t nworkers, uint64_t nslots)
    int fp_counters_init(void *base, size_t size, uint32_t nworkers, uint64_t nslots)
    int fp_counters_check(const void *base, size_t size)
    fp_worker_hdr *fp_counters_worker(void *base, uint32_t worker)
    uint64_t *fp_counters_slots(void *base, uint32_t worker)
    void fp_counters_sum(const void *base, uint64_t *out, uint64_t n)

    void fp_counter_add(uint64_t *c, uint64_t n)
