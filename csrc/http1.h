/* http1.h - HTTP/1.1 message heads, chunked bodies and framing (RFC 9112).
 *
 * Plain C99, no allocation, no copying, no global state, no Python.
 *
 * Everything this file returns about a message is an OFFSET and a LENGTH into
 * the caller's buffer (http1_span), never a pointer: the caller may move or
 * grow its buffer between two calls of a resumable parse, and the results so
 * far stay valid. The caller owns every array (headers, chunk data spans).
 *
 * Strictness. The parsers accept exactly the RFC 9112 / RFC 9110 grammar,
 * with three documented tolerances: empty lines (CRLF) before a request-line
 * are skipped (RFC 9112 §2.2), a status-line may omit the SP and reason
 * (`HTTP/1.1 200\r\n`, common in the wild), and status codes 600..999 are
 * accepted (RFC 9110 §15 says to treat them as 5xx, we pass them on). Among
 * what they reject: bare CR, bare LF, NUL and every other CTL (and DEL) in
 * names, values and start lines; whitespace before a colon; obs-fold (a
 * line starting with SP/HTAB); several spaces between request-line words;
 * versions other than HTTP/1.0 and HTTP/1.1; request-target bytes outside
 * VCHAR (0x21..0x7E); '*' other than with OPTIONS; CONNECT without an
 * authority-form target.
 *
 * Errors. A function that fails stores an http1_error: `status` is the HTTP
 * status a server should answer with before closing the connection, and
 * `reason` a short static ASCII string (never freed, safe to log or send).
 *   request parsing and request framing: 400, 413, 414, 431, 501, 505;
 *   response parsing and response framing: always 502 (the upstream is at
 *   fault; the proxy answers its client 502);
 *   chunked decoding: 400, 413 or 431 (a response body being decoded has
 *   already started towards the client: the caller resets instead).
 * A status of 500 means the caller broke a contract (e.g. a shrinking
 * buffer on resume).
 *
 * SIMD. With __SSE4_2__ defined at build time (-msse4.2, -march=x86-64-v2 or
 * newer) the scanners for header names, values, targets and reasons use
 * PCMPESTRI over ranges of allowed bytes; otherwise a table-driven scalar
 * loop. Both give identical results; http1_simd() says which one was built.
 * Neither reads a byte at or beyond buf + len.
 */
#ifndef FASTPROXY_HTTP1_H
#define FASTPROXY_HTTP1_H

#include <stddef.h>
#include <stdint.h>

#define HTTP1_ERROR      (-1) /* the input is invalid; see the error field */
#define HTTP1_INCOMPLETE (-2) /* valid so far; call again with more bytes  */

/* Default limits, as Envoy's: 60 KiB of head and 100 header fields. The
 * request-line default equals the head limit so that any URI Envoy would
 * forward, we forward; lower it to get 414s earlier. */
#define HTTP1_DEFAULT_MAX_HEAD_BYTES (60u * 1024u)
#define HTTP1_DEFAULT_MAX_HEADERS    100u
#define HTTP1_DEFAULT_MAX_LINE_BYTES (60u * 1024u)
/* Longest chunk-size line (size, extensions, CRLF) the decoder accepts. */
#define HTTP1_MAX_CHUNK_LINE_BYTES   4096u
/* Most options one message's Connection fields may name (see framing). */
#define HTTP1_MAX_CONN_TOKENS        16

/* Bytes [off, off + len) of the buffer the result came from. */
typedef struct http1_span {
    uint32_t off;
    uint32_t len;
} http1_span;

/* One field line. `name` is exactly the bytes before the colon (case kept).
 * `value` excludes the leading and trailing SP/HTAB (RFC 9112 §5) and may be
 * empty (len 0; off then points where it would have started). */
typedef struct http1_header {
    http1_span name;
    http1_span value;
} http1_header;

typedef struct http1_limits {
    /* Bytes of the whole head: any empty lines skipped before the request
     * line, the start line, every field line and the final CRLF. Over it:
     * 431 (502 for a response). Also bounds a chunked body's trailer
     * section. Values over 2^31 - 1 are lowered to it. */
    uint32_t max_head_bytes;
    /* Field lines in one head (and in one trailer section). Over it: 431. */
    uint32_t max_headers;
    /* Bytes of the request-line or status-line, CRLF excluded. Over it:
     * 414 for a request-line (whatever part is long: method, target), 502
     * for a status-line. A request-line that does not end within
     * max_head_bytes is also a 414. */
    uint32_t max_line_bytes;
} http1_limits;

typedef struct http1_error {
    int status;         /* 0 while no error */
    const char *reason; /* static, short, ASCII; NULL while no error */
} http1_error;

/* A head parser: configuration, results, and the resume state.
 *
 * Results are valid once a parse returned > 0 (method/target/status/reason/
 * minor_version/headers[0..num_headers)). While parsing is incomplete the
 * fields hold partial state and must not be used.
 *
 * Resume state (private, trailing underscore): `stage_` names the grammar
 * element being scanned and `pos_` is the offset of the first byte not yet
 * validated. Everything before pos_ has been checked once and is never read
 * again; the element in progress keeps its start offset in the result field
 * it will fill (method.off, target.off, reason.off, or the name/value off of
 * headers[num_headers]). A fixed-length element (the version, a CRLF, the
 * status code) is re-examined from its start, i.e. at most 13 bytes again.
 * So feeding a head one byte at a time costs O(length), not O(length^2). */
typedef struct http1_parser {
    /* configuration: set by http1_parser_init, read-only afterwards */
    http1_header *headers;  /* caller-owned array of headers_cap entries   */
    uint32_t headers_cap;
    http1_limits limits;

    /* results */
    http1_span method;      /* request: the method token (case kept)      */
    http1_span target;      /* request: the request-target, as sent       */
    int status;             /* response: 100..999                         */
    http1_span reason;      /* response: reason-phrase, may be empty      */
    int minor_version;      /* 0 or 1 (the major is always 1)             */
    uint32_t num_headers;   /* entries of headers[] filled                */
    uint32_t consumed;      /* bytes of the head, once complete           */
    http1_error err;        /* set when a parse returned HTTP1_ERROR      */

    /* resume state: private */
    uint32_t pos_;
    uint8_t stage_;
    uint8_t is_response_;
} http1_parser;

/* Fills *l with the defaults above. */
void http1_limits_init(http1_limits *l);

/* Prepares p for a new message. headers[0..headers_cap) receives the field
 * lines; the effective header limit is min(headers_cap, limits->max_headers).
 * limits may be NULL (defaults); a zero field in *limits means its default.
 * headers must stay valid (and untouched by the caller) until the parse
 * completes or fails. */
void http1_parser_init(http1_parser *p, http1_header *headers, uint32_t headers_cap,
                       const http1_limits *limits);

/* Forgets the message in progress (results and resume state), keeping the
 * configuration: call it before parsing the next message of a connection,
 * with buf advanced by the previous message's length. */
void http1_parser_reset(http1_parser *p);

/* Parses a request head from buf[0..len).
 *
 * Returns the number of bytes of the head (> 0; the body, or the next
 * message, starts at buf + that), HTTP1_INCOMPLETE when every byte so far is
 * valid but the head has not ended, or HTTP1_ERROR with p->err set.
 *
 * Resuming: after HTTP1_INCOMPLETE, call again with the same p and a buffer
 * whose first `len` bytes are the same as before (the caller may have moved
 * it) followed by new bytes. Only the new bytes are examined, plus at most 13
 * old ones and, once per field line, its trailing SP/HTAB (to trim them).
 * Calling with a shorter len than the bytes already validated is a
 * contract error (500). After a result > 0 or HTTP1_ERROR, further calls
 * return the same result until http1_parser_reset.
 *
 * The limits are enforced on what has arrived, so that an attacker cannot
 * make us wait for more than the limit: as soon as max_line_bytes of a
 * request-line or max_head_bytes of a head are present without the element
 * ending, the result is an error (414 / 431), even if incomplete. A given
 * byte string yields the same result whether fed whole or in pieces.
 *
 * Grammar accepted (RFC 9112 §2.2, §3, §5):
 *   *( CRLF ) method SP request-target SP HTTP-version CRLF
 *   *( field-name ":" OWS field-value OWS CRLF ) CRLF
 * method and field-name are tokens; field-value bytes are HTAB, SP, VCHAR or
 * obs-text. The target must be origin-form ('/'...), absolute-form
 * (scheme "://" ...), authority-form (host ":" port, with CONNECT only, which
 * requires it) or asterisk-form ("*", with OPTIONS only).
 * Errors: 400 (syntax), 414 (request-line too long), 431 (head too large,
 * too many fields), 505 (well-formed HTTP-version other than 1.0/1.1). */
int http1_parse_request(http1_parser *p, const char *buf, size_t len);

/* Parses a response head from buf[0..len); same contract as
 * http1_parse_request, with the grammar
 *   HTTP-version SP 3DIGIT [ SP reason-phrase ] CRLF  field lines  CRLF
 * where the status code is 100..999 and reason-phrase bytes are HTAB, SP,
 * VCHAR or obs-text (possibly none). Every error has status 502. A 1xx
 * response is a complete head like any other: the caller parses the final
 * response after it with http1_parser_reset. */
int http1_parse_response(http1_parser *p, const char *buf, size_t len);

/* ---- chunked bodies (RFC 9112 §7.1) ---------------------------------- */

/* A resumable chunked-body decoder. It keeps no pointer into any buffer:
 * each call may be given a different buffer holding the next bytes. */
typedef struct http1_chunked {
    uint64_t remaining;     /* data bytes left in the current chunk        */
    uint64_t size;          /* the chunk size being read                   */
    uint64_t body_bytes;    /* data bytes reported so far                  */
    uint32_t line_bytes;    /* bytes of the current size or trailer line   */
    uint32_t trailer_bytes; /* bytes of the trailer section so far         */
    uint32_t num_trailers;  /* trailer field lines seen                    */
    uint32_t max_trailer_bytes;
    uint32_t max_trailers;
    uint8_t stage_;         /* private: the grammar element in progress    */
    uint8_t done;           /* 1 once the final CRLF has been consumed     */
    http1_error err;
} http1_chunked;

/* Prepares d for a new body; limits may be NULL (defaults). The trailer
 * section is bounded by limits->max_head_bytes and ->max_headers (431). */
void http1_chunked_init(http1_chunked *d, const http1_limits *limits);

/* Decodes chunked framing from buf[0..len), the bytes that follow those of
 * the previous call (len is clamped to UINT32_MAX per call).
 *
 * Each run of chunk data found is reported as a span (offsets into this
 * buf) in spans[*nspans], *nspans counting up to spans_cap; framing bytes
 * (sizes, extensions, CRLFs, trailers) are validated and skipped.
 * Returns the number of bytes consumed (0..len), or HTTP1_ERROR with d->err
 * set. It stops early when the body ends (d->done = 1; bytes after the
 * returned count belong to the next message) or when a data span would be
 * needed and spans_cap are full; call again with buf + consumed.
 *
 * A proxy should re-frame from the spans (write its own size lines) rather
 * than forward the framing bytes, so chunk extensions never reach the next
 * hop. Trailer fields are validated like header fields but not reported.
 *
 * Grammar (RFC 9112 §7.1): chunk-size is 1*HEXDIG (leading zeros allowed,
 * value at most 2^63-1, else 413); chunk-ext is
 *   *( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )
 * the size line is at most HTTP1_MAX_CHUNK_LINE_BYTES (else 400); every line
 * ends in CRLF, and chunk data is followed by CRLF (else 400). */
int64_t http1_chunked_decode(http1_chunked *d, const char *buf, size_t len,
                             http1_span *spans, size_t spans_cap, size_t *nspans);

/* ---- framing and connection semantics (RFC 9112 §6, §9; RFC 9110 §7) - */

enum http1_body {
    HTTP1_BODY_NONE = 0,     /* no body follows the head                   */
    HTTP1_BODY_LENGTH,       /* content_length (> 0) bytes follow          */
    HTTP1_BODY_CHUNKED,      /* a chunked body follows (http1_chunked)     */
    HTTP1_BODY_UNTIL_CLOSE,  /* response only: the body ends at EOF        */
    HTTP1_BODY_TUNNEL        /* bytes after the head are opaque: CONNECT
                                request or its 2xx, 101 Switching Protocols */
};

typedef struct http1_framing {
    int body;                   /* enum http1_body                          */
    uint64_t content_length;    /* with HTTP1_BODY_LENGTH                   */
    uint8_t keep_alive;         /* the connection may carry another message */
    uint8_t conn_close;         /* Connection names "close"                 */
    uint8_t conn_keep_alive;    /* Connection names "keep-alive"            */
    uint8_t conn_upgrade;       /* Connection names "upgrade"               */
    uint8_t upgrade;            /* request: HTTP/1.1 with Upgrade and
                                   Connection: upgrade; response: 101       */
    uint8_t expect_continue;    /* request: HTTP/1.1, Expect: 100-continue  */
    uint8_t expect_other;       /* request: an Expect value we do not know  */
    int32_t content_length_index;    /* index in headers[], or -1           */
    int32_t transfer_encoding_index; /* the last Transfer-Encoding, or -1   */
    int32_t host_index;              /* request only; or -1                 */
    int32_t upgrade_index;           /* the first Upgrade field, or -1      */
    uint32_t num_conn_tokens;
    /* every option named by Connection fields (including close, keep-alive
     * and upgrade), as sent: the field names a proxy must also remove as
     * hop-by-hop (RFC 9110 §7.6.1). */
    http1_span conn_tokens[HTTP1_MAX_CONN_TOKENS];
    http1_error err;
} http1_framing;

/* Derives a request's framing from its parsed head: buf is the buffer the
 * spans refer to (method, headers[0..n)).
 * Returns 0 and fills *f, or HTTP1_ERROR with f->err set:
 *   400: more than one Content-Length field, or a value that is not
 *        1*DIGIT (lists such as "1, 1" included); both Content-Length and
 *        Transfer-Encoding; Transfer-Encoding in an HTTP/1.0 request, with
 *        no coding, with chunked not last, twice or with parameters, or with
 *        a syntax error; a CONNECT with Transfer-Encoding or a non-zero
 *        Content-Length; no Host in HTTP/1.1, more than one Host, or a Host
 *        value with bytes outside the URI authority characters; a
 *        Connection value that is not a token list; more than
 *        HTTP1_MAX_CONN_TOKENS Connection options;
 *   413: a Content-Length over 2^63-1;
 *   501: chunked is last, but an earlier coding is not one of gzip,
 *        x-gzip, deflate, compress, x-compress.
 * Body: CONNECT -> TUNNEL; Transfer-Encoding -> CHUNKED; Content-Length > 0
 * -> LENGTH; otherwise NONE. keep_alive: HTTP/1.1 unless "close"; HTTP/1.0
 * only with "keep-alive" and without "close". The Upgrade request of an
 * HTTP/1.0 message and the Expect of an HTTP/1.0 message are ignored
 * (RFC 9110 §7.8, §10.1.1). */
int http1_request_framing(const char *buf, http1_span method, int minor_version,
                          const http1_header *headers, uint32_t n, http1_framing *f);

/* Derives a response's framing (RFC 9112 §6.3). req_head / req_connect say
 * whether the request it answers was HEAD / CONNECT.
 * Body: HEAD request, 1xx (but 101), 204, 304 -> NONE; 101 -> TUNNEL (and
 * upgrade = 1); CONNECT with 2xx -> TUNNEL; Transfer-Encoding with chunked
 * last -> CHUNKED, other codings -> UNTIL_CLOSE; Content-Length > 0 ->
 * LENGTH, = 0 -> NONE; nothing -> UNTIL_CLOSE. keep_alive as for requests,
 * and 0 with UNTIL_CLOSE or TUNNEL.
 * Errors (502): the Content-Length and Transfer-Encoding rules of requests
 * (unknown codings are allowed: the proxy does not decode them), checked
 * even when the status says there is no body. Host is not examined. */
int http1_response_framing(const char *buf, int status, int minor_version, int req_head,
                           int req_connect, const http1_header *headers, uint32_t n,
                           http1_framing *f);

/* Case-insensitive comparison of buf[s] with the NUL-free ASCII string
 * lower (which must be lower case): 1 if equal. For header names. */
int http1_span_ieq(const char *buf, http1_span s, const char *lower, size_t lower_len);

/* "sse4.2" or "scalar": the scanner compiled in. */
const char *http1_simd(void);

#endif /* FASTPROXY_HTTP1_H */
