# extern declarations only: csrc/rewrite.h (the contracts are written there)
from libc.stdint cimport int64_t, uint8_t, uint32_t

from fastproxy._native.http1 cimport http1_framing, http1_parser


cdef extern from "rewrite.h" nogil:
    enum:
        RW_MAX_SET
        RW_UUID_LEN
        RW_DROP_TRANSFER_ENCODING

    const uint32_t RW_PATH_WHOLE

    enum rw_connection:
        RW_CONN_NONE
        RW_CONN_CLOSE
        RW_CONN_KEEP_ALIVE
        RW_CONN_UPGRADE

    ctypedef struct rw_str:
        const char *ptr
        uint32_t len

    ctypedef struct rw_field:
        rw_str name
        rw_str value

    ctypedef struct rw_ops:
        const rw_field *set
        uint32_t nset
        const rw_field *add
        uint32_t nadd
        const rw_str *remove
        uint32_t nremove
        uint8_t rewrite_path
        uint32_t path_prefix_len
        rw_str path
        uint8_t rewrite_authority
        rw_str authority

    ctypedef struct rw_ctx:
        int version_minor
        int connection
        uint32_t flags
        rw_str peer
        rw_str proto
        const uint8_t *request_id
        rw_str default_host
        rw_str extra

    void rw_ctx_init(rw_ctx *ctx)
    const char *rw_ops_check(const rw_ops *ops)
    int64_t rw_request(const char *buf, const http1_parser *p, const http1_framing *f,
                       const rw_ops *ops, const rw_ctx *ctx, char *out, size_t cap)
    int64_t rw_response(const char *buf, const http1_parser *p, const http1_framing *f,
                        const rw_ops *ops, const rw_ctx *ctx, char *out, size_t cap)
    void rw_uuid4(const uint8_t *rnd, char *out)
