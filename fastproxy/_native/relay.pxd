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
        fp_counter *ctr[2]

    ctypedef struct fp_relay:
        fp_relay_dir dir[2]
        size_t chunk
        uint32_t activity
        int error
        int reset_side

    void fp_relay_init(fp_relay *r, int a, int b, size_t chunk)
    int fp_relay_pump(fp_relay *r, int events)
    int fp_relay_start(fp_relay *r)
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
    int fp_connect_result(int fd)
    void fp_sock_abort(int fd)
    void fp_sock_close(int fd)
