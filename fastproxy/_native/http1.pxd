# extern declarations only: csrc/http1.h (the contracts are written there)
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "http1.h" nogil:
    enum:
        HTTP1_ERROR
        HTTP1_INCOMPLETE
        HTTP1_DEFAULT_MAX_HEAD_BYTES
        HTTP1_DEFAULT_MAX_HEADERS
        HTTP1_DEFAULT_MAX_LINE_BYTES
        HTTP1_MAX_CHUNK_LINE_BYTES
        HTTP1_MAX_CONN_TOKENS

    enum http1_body:
        HTTP1_BODY_NONE
        HTTP1_BODY_LENGTH
        HTTP1_BODY_CHUNKED
        HTTP1_BODY_UNTIL_CLOSE
        HTTP1_BODY_TUNNEL

    ctypedef struct http1_span:
        uint32_t off
        uint32_t len

    ctypedef struct http1_header:
        http1_span name
        http1_span value

    ctypedef struct http1_limits:
        uint32_t max_head_bytes
        uint32_t max_headers
        uint32_t max_line_bytes

    ctypedef struct http1_error:
        int status
        const char *reason

    ctypedef struct http1_parser:
        http1_header *headers
        uint32_t headers_cap
        http1_limits limits
        http1_span method
        http1_span target
        int status
        http1_span reason
        int minor_version
        uint32_t num_headers
        uint32_t consumed
        http1_error err

    ctypedef struct http1_chunked:
        uint64_t remaining
        uint64_t body_bytes
        uint32_t num_trailers
        uint8_t done
        http1_error err

    ctypedef struct http1_framing:
        int body
        uint64_t content_length
        uint8_t keep_alive
        uint8_t conn_close
        uint8_t conn_keep_alive
        uint8_t conn_upgrade
        uint8_t upgrade
        uint8_t expect_continue
        uint8_t expect_other
        int32_t content_length_index
        int32_t transfer_encoding_index
        int32_t host_index
        int32_t upgrade_index
        uint32_t num_conn_tokens
        http1_span conn_tokens[16]
        http1_error err

    void http1_limits_init(http1_limits *l)
    void http1_parser_init(http1_parser *p, http1_header *headers, uint32_t headers_cap,
                           const http1_limits *limits)
    void http1_parser_reset(http1_parser *p)
    int http1_parse_request(http1_parser *p, const char *buf, size_t len)
    int http1_parse_response(http1_parser *p, const char *buf, size_t len)

    void http1_chunked_init(http1_chunked *d, const http1_limits *limits)
    int64_t http1_chunked_decode(http1_chunked *d, const char *buf, size_t len,
                                 http1_span *spans, size_t spans_cap, size_t *nspans)

    int http1_request_framing(const char *buf, http1_span method, int minor_version,
                              const http1_header *headers, uint32_t n, http1_framing *f)
    int http1_response_framing(const char *buf, int status, int minor_version, int req_head,
                               int req_connect, const http1_header *headers, uint32_t n,
                               http1_framing *f)
    int http1_span_ieq(const char *buf, http1_span s, const char *lower, size_t lower_len)
    const char *http1_simd()
