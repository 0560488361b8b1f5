# extern declarations only: csrc/relay.h and csrc/sockops.h
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "relay.h" nogil:
    enum:
        FP_READ_A
        FP_WRITE_A
        FP_READ_B
        FP_WRITE_B
        FP_WANT_MASK
        FP_RELAY_DONE
        FP_RELAY_RESET

    ctypedef uint64_t fp_counter

    ctypedef struct fp_relay_dir:
        int src, dst
        size_t in_flight
        unsigned flags
        uint64_t spliced
        uint64_t copied
        fp_counter *ctr[3]

    ctypedef struct fp_relay:
        fp_relay_dir dir[2]
        size_t chunk
        uint32_t activity
        int error
        int reset_side
        void *user
        unsigned eng_state
        int eng_how

    void fp_relay_init(fp_relay *r, int a, int b, size_t chunk)
    void fp_relay_free(fp_relay *r)


cdef extern from "sockops.h" nogil:
    ctypedef struct fp_addr:
        int family
        uint16_t port
        uint8_t ip[16]

    int fp_accept_batch(int lfd, int *fds, int max)
    int fp_original_dst(int fd, fp_addr *out, int *redirected)
    int fp_local_addr(int fd, fp_addr *out)
    int fp_peer_addr(int fd, fp_addr *out)
    int fp_connect(const fp_addr *dst, const fp_addr *src, int *in_progress)
    int fp_connect_transparent(const fp_addr *dst, const fp_addr *src, uint32_t mark, int *in_progress)
    int fp_connect_result(int fd)
    void fp_sock_abort(int fd)
    void fp_sock_close(int fd)


cdef extern from "engine.h" nogil:
    enum:
        FP_END_DONE
        FP_END_RESET
        FP_END_CONNECT_FAIL
        FP_END_CONNECT_TIMEOUT
        FP_END_ABORTED
        FP_ENG_CONNECTING

    ctypedef struct fp_engine:
        pass

    ctypedef struct fp_finished:
        fp_relay *relay
        int how

    fp_engine *fp_engine_new(size_t chunk, unsigned pool_max)
    int fp_engine_fd(const fp_engine *e)
    int fp_engine_add(fp_engine *e, fp_relay *r, int connecting, void *user)
    int fp_engine_run(fp_engine *e, fp_finished *out, int max, int *more)
    void fp_engine_finish(fp_engine *e, fp_relay *r)
    unsigned fp_engine_count(const fp_engine *e)
    void fp_engine_free(fp_engine *e)
