/* test_http1.c - csrc/http1.c under ASan/UBSan, with guard pages.
 *
 * A table of cases; each prints "<name> ok" or "<name> FAIL" (the failed
 * check above it). The last line is "N passed, M failed"; the exit status is
 * nonzero if any case failed.
 *
 * Every input is copied so that it ENDS at the first byte of a PROT_NONE
 * page: reading one byte past the length crashes. Prefixes used for resume
 * tests are placed the same way (at a different address each time, which
 * also checks that results are offsets, not pointers).
 *
 * Both scanners are tested. `make test-c` links csrc/http1.c as built by the
 * Makefile flags (scalar, unless CFLAGS enable SSE4.2); this file compiles a
 * second copy of csrc/http1.c (testkit.h does, for TESTKIT_HTTP1_ALT) with
 * its public names prefixed `alt_`: with
 * `#pragma GCC target("sse4.2")` when the linked copy is scalar, or with
 * HTTP1_NO_SIMD when the linked copy is SSE4.2. Every table runs against
 * both copies (lines start with [scalar] or [sse4.2]). To build it the other
 * way round by hand:
 *   gcc -std=gnu99 -g -O1 -msse4.2 -fsanitize=address,undefined -Icsrc \
 *       -o build/ctest/test_http1_sse tests/c/test_http1.c csrc/http1.c
 */
#define TESTKIT_HTTP1_ALT 1 /* the second copy of csrc/http1.c, alt_ names */
#include "testkit.h"

#include <signal.h>
#include <sys/wait.h>

/* The tables leave trailing fields of error cases to their zero default. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

/* ---- the two copies of the parser -------------------------------------- */

typedef struct impl {
    const char *(*simd)(void);
    void (*parser_init)(http1_parser *, http1_header *, uint32_t, const http1_limits *);
    int (*parse_request)(http1_parser *, const char *, size_t);
    int (*parse_response)(http1_parser *, const char *, size_t);
    void (*chunked_init)(http1_chunked *, const http1_limits *);
    int64_t (*chunked_decode)(http1_chunked *, const char *, size_t, http1_span *, size_t,
                              size_t *);
    int (*request_framing)(const char *, http1_span, int, const http1_header *, uint32_t,
                           http1_framing *);
    int (*response_framing)(const char *, int, int, int, int, const http1_header *, uint32_t,
                            http1_framing *);
} impl;

static const impl k_linked = {
    http1_simd, http1_parser_init, http1_parse_request, http1_parse_response,
    http1_chunked_init, http1_chunked_decode, http1_request_framing, http1_response_framing,
};
#ifdef TK_HTTP1_HAVE_ALT
static const impl k_alt = {
    alt_http1_simd, alt_http1_parser_init, alt_http1_parse_request, alt_http1_parse_response,
    alt_http1_chunked_init, alt_http1_chunked_decode, alt_http1_request_framing,
    alt_http1_response_framing,
};
#endif

/* ---- harness ----------------------------------------------------------- */

/* The guard arena: 256 KiB usable bytes, then one PROT_NONE page. */
static tk_guard g_arena;

/* Copies src[0..n) so that it ends where the guard page begins. */
static const char *place(const char *src, size_t n)
{
    return tk_guard_place(&g_arena, src, n);
}

#define S(lit) lit, sizeof(lit) - 1

/* ---- head cases -------------------------------------------------------- */

typedef struct head_case {
    const char *name;
    const char *in;
    size_t len;
    char kind;           /* 'Q' request, 'R' response */
    int status;          /* 0: must parse; else the expected err.status */
    long consumed;       /* when parsed: bytes of the head, -1 = all of it */
    const char *start;   /* "METHOD TARGET minor" or "status reason minor" */
    const char *headers; /* "name: value\n" for each field line */
    const http1_limits *limits;
    uint32_t cap;        /* header array entries; 0 = 128 */
} head_case;

static const http1_limits k_small = {256, 4, 48};

static const head_case k_heads[] = {
    /* ---- valid requests ---- */
    {"request: minimal", S("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), 'Q', 0, -1, "GET / 1",
     "Host: a\n", NULL, 0},
    {"request: HTTP/1.0 without fields", S("GET /x HTTP/1.0\r\n\r\n"), 'Q', 0, -1,
     "GET /x 0", "", NULL, 0},
    {"request: browser-like head",
     S("GET /wp-content/uploads/2010/03/hello-kitty-darth-vader-pink.jpg HTTP/1.1\r\n"
       "Host: www.kittyhell.com\r\n"
       "User-Agent: Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10.6; ja-JP-mac; rv:1.9.2.3) "
       "Gecko/20100401 Firefox/3.6.3 Pathtraq/0.9\r\n"
       "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
       "Accept-Language: ja,en-us;q=0.7,en;q=0.3\r\n"
       "Accept-Encoding: gzip,deflate\r\n"
       "Accept-Charset: Shift_JIS,utf-8;q=0.7,*;q=0.7\r\n"
       "Keep-Alive: 115\r\n"
       "Connection: keep-alive\r\n"
       "Cookie: wp_ozh_wsa_visits=2; wp_ozh_wsa_visit_lasttime=xxxxxxxxxx; "
       "__utma=xxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.x; "
       "__utmz=xxxxxxxxx.xxxxxxxxxx.x.x.utmccn=(referral)|utmcsr=reader.livedoor.com|"
       "utmcct=/reader/|utmcmd=referral\r\n\r\n"),
     'Q', 0, -1, "GET /wp-content/uploads/2010/03/hello-kitty-darth-vader-pink.jpg 1",
     "Host: www.kittyhell.com\n"
     "User-Agent: Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10.6; ja-JP-mac; rv:1.9.2.3) "
     "Gecko/20100401 Firefox/3.6.3 Pathtraq/0.9\n"
     "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\n"
     "Accept-Language: ja,en-us;q=0.7,en;q=0.3\n"
     "Accept-Encoding: gzip,deflate\n"
     "Accept-Charset: Shift_JIS,utf-8;q=0.7,*;q=0.7\n"
     "Keep-Alive: 115\n"
     "Connection: keep-alive\n"
     "Cookie: wp_ozh_wsa_visits=2; wp_ozh_wsa_visit_lasttime=xxxxxxxxxx; "
     "__utma=xxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.x; "
     "__utmz=xxxxxxxxx.xxxxxxxxxx.x.x.utmccn=(referral)|utmcsr=reader.livedoor.com|"
     "utmcct=/reader/|utmcmd=referral\n",
     NULL, 0},
    {"request: OWS around values is trimmed, inner kept",
     S("GET / HTTP/1.1\r\nHost:a\r\nX: \t b \t c \t \r\nY:\r\nZ:   \r\n\r\n"), 'Q', 0, -1,
     "GET / 1", "Host: a\nX: b \t c\nY: \nZ: \n", NULL, 0},
    {"request: obs-text and colons in values",
     S("GET / HTTP/1.1\r\nHost: a\r\nX: \xff\x80 caf\xc3\xa9\r\nY: a:b::c\r\n\r\n"), 'Q', 0,
     -1, "GET / 1", "Host: a\nX: \xff\x80 caf\xc3\xa9\nY: a:b::c\n", NULL, 0},
    {"request: every tchar in a name",
     S("GET / HTTP/1.1\r\n!#$%&'*+-.^_`|~09AZaz: 1\r\nx~y|z~~~~~~~~~~~~~~~~~~~~~~~~: 2\r\n\r\n"),
     'Q', 0, -1, "GET / 1", "!#$%&'*+-.^_`|~09AZaz: 1\nx~y|z~~~~~~~~~~~~~~~~~~~~~~~~: 2\n",
     NULL, 0},
    {"request: values of 15..33 bytes (SIMD block edges)",
     S("GET / HTTP/1.1\r\nA: 123456789012345\r\nB: 1234567890123456\r\n"
       "C: 12345678901234567\r\nD: 1234567890123456789012345678901\r\n"
       "E: 12345678901234567890123456789012\r\nF: 123456789012345678901234567890123\r\n\r\n"),
     'Q', 0, -1, "GET / 1",
     "A: 123456789012345\nB: 1234567890123456\nC: 12345678901234567\n"
     "D: 1234567890123456789012345678901\nE: 12345678901234567890123456789012\n"
     "F: 123456789012345678901234567890123\n",
     NULL, 0},
    {"request: absolute-form", S("GET http://a.example:8080/p?q=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
     'Q', 0, -1, "GET http://a.example:8080/p?q=1 1", "Host: a\n", NULL, 0},
    {"request: CONNECT authority-form", S("CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
     'Q', 0, -1, "CONNECT a.example:443 1", "Host: a\n", NULL, 0},
    {"request: CONNECT IPv6 literal", S("CONNECT [::1]:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 'Q',
     0, -1, "CONNECT [::1]:443 1", "Host: a\n", NULL, 0},
    {"request: OPTIONS *", S("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"), 'Q', 0, -1,
     "OPTIONS * 1", "Host: a\n", NULL, 0},
    {"request: empty lines before the request-line",
     S("\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"), 'Q', 0, -1, "GET / 1", "Host: a\n", NULL,
     0},
    {"request: body bytes are not consumed",
     S("POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), 'Q', 0, 48,
     "POST /u 1", "Host: a\nContent-Length: 5\n", NULL, 0},
    {"request: pipelined, first one only",
     S("GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"), 'Q', 0, 28,
     "GET /1 1", "Host: a\n", NULL, 0},
    {"request: extension and lower-case methods", S("purge-ALL /x HTTP/1.1\r\nHost: a\r\n\r\n"),
     'Q', 0, -1, "purge-ALL /x 1", "Host: a\n", NULL, 0},
    {"request: every VCHAR in the target",
     S("GET /!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopq"
       "rstuvwxyz{|}~ HTTP/1.1\r\nHost: a\r\n\r\n"),
     'Q', 0, -1,
     "GET /!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopq"
     "rstuvwxyz{|}~ 1",
     "Host: a\n", NULL, 0},

    /* ---- malformed requests ---- */
    {"request: bare LF ends the request-line", S("GET / HTTP/1.1\nHost: a\r\n\r\n"), 'Q', 400},
    {"request: bare LF ends a field line", S("GET / HTTP/1.1\r\nHost: a\n\r\n"), 'Q', 400},
    {"request: bare LF ends the head", S("GET / HTTP/1.1\r\nHost: a\r\n\n"), 'Q', 400},
    {"request: bare CR in a value", S("GET / HTTP/1.1\r\nX: a\rb\r\n\r\n"), 'Q', 400},
    {"request: CR CR at the end of the head", S("GET / HTTP/1.1\r\nX: a\r\n\r\r\n"), 'Q', 400},
    {"request: bare CR before the request-line", S("\rGET / HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: NUL in a value", S("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n"), 'Q', 400},
    {"request: NUL in a name", S("GET / HTTP/1.1\r\nX\0: a\r\n\r\n"), 'Q', 400},
    {"request: NUL in the target", S("GET /\0 HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: CTL 0x01 in a value", S("GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n"), 'Q', 400},
    {"request: CTL 0x1f in a long value",
     S("GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\x1f\r\n\r\n"), 'Q', 400},
    {"request: DEL in a value", S("GET / HTTP/1.1\r\nX: a\x7fz\r\n\r\n"), 'Q', 400},
    {"request: DEL in the target", S("GET /a\x7f HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: HTAB in the target", S("GET /a\tb HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: obs-text in the target", S("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: SP before the colon", S("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 'Q', 400},
    {"request: HTAB before the colon", S("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"), 'Q', 400},
    {"request: obs-fold", S("GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n"), 'Q', 400},
    {"request: obs-fold with HTAB", S("GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n"), 'Q', 400},
    {"request: whitespace before the first field", S("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), 'Q',
     400},
    {"request: empty field name", S("GET / HTTP/1.1\r\n: a\r\n\r\n"), 'Q', 400},
    {"request: field line without colon", S("GET / HTTP/1.1\r\nHost\r\n\r\n"), 'Q', 400},
    {"request: '(' in a name", S("GET / HTTP/1.1\r\nX(y: a\r\n\r\n"), 'Q', 400},
    {"request: '\"' in a name", S("GET / HTTP/1.1\r\nX\"y: a\r\n\r\n"), 'Q', 400},
    {"request: obs-text in a name", S("GET / HTTP/1.1\r\nX\xc3\xa9: a\r\n\r\n"), 'Q', 400},
    {"request: '/' in a long name",
     S("GET / HTTP/1.1\r\nabcdefghijklmnopqrstuvwxyz/abc: a\r\n\r\n"), 'Q', 400},
    {"request: invalid method", S("GE(T / HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: empty method", S(" / HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: two spaces after the method", S("GET  / HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: two spaces after the target", S("GET /  HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: HTAB as separator", S("GET\t/ HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: HTTP/0.9 (no version)", S("GET /\r\n\r\n"), 'Q', 400},
    {"request: HTTP/1.2", S("GET / HTTP/1.2\r\n\r\n"), 'Q', 505},
    {"request: HTTP/2.0", S("GET / HTTP/2.0\r\n\r\n"), 'Q', 505},
    {"request: HTTP/0.9", S("GET / HTTP/0.9\r\n\r\n"), 'Q', 505},
    {"request: lower-case http/1.1", S("GET / http/1.1\r\n\r\n"), 'Q', 400},
    {"request: HTTP/1.10", S("GET / HTTP/1.10\r\n\r\n"), 'Q', 400},
    {"request: HTTP/1", S("GET / HTTP/1\r\n\r\n"), 'Q', 400},
    {"request: SP after the version", S("GET / HTTP/1.1 \r\n\r\n"), 'Q', 400},
    {"request: '*' with GET", S("GET * HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: '*x' with OPTIONS", S("OPTIONS *x HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: CONNECT with origin-form", S("CONNECT /x HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: CONNECT without a port", S("CONNECT a.example HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: CONNECT with an empty port", S("CONNECT a.example: HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: target without '/' or scheme", S("GET x HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: target starting with a digit", S("GET 1:x HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: absolute-form without //", S("GET urn:x HTTP/1.1\r\n\r\n"), 'Q', 400},
    {"request: absolute-form scheme only", S("GET http: HTTP/1.1\r\n\r\n"), 'Q', 400},

    /* ---- limits (k_small: 256 head bytes, 4 fields, 48 request-line bytes) ---- */
    {"limit: request-line of exactly 48 bytes",
     S("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n"), 'Q', 0, -1,
     "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 1", "", &k_small, 0},
    {"limit: request-line of 49 bytes -> 414",
     S("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n"), 'Q', 414, 0, NULL, NULL,
     &k_small, 0},
    {"limit: long method -> 414",
     S("GETGETGETGETGETGETGETGETGETGETGETGETGETGETGETGETGET / HTTP/1.1\r\n\r\n"), 'Q', 414, 0,
     NULL, NULL, &k_small, 0},
    {"limit: unfinished long target -> 414 before its end",
     S("GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), 'Q', 414, 0, NULL,
     NULL, &k_small, 0},
    {"limit: 4 fields", S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n"), 'Q', 0, -1,
     "GET / 1", "A: 1\nB: 2\nC: 3\nD: 4\n", &k_small, 0},
    {"limit: 5 fields -> 431", S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n"),
     'Q', 431, 0, NULL, NULL, &k_small, 0},
    {"limit: header array of 2 entries -> 431", S("GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"),
     'Q', 431, 0, NULL, NULL, NULL, 2},
    {"limit: head of exactly 256 bytes",
     S("GET / HTTP/1.1\r\nX: "
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"),
     'Q', 0, -1, "GET / 1",
     "X: "
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n",
     &k_small, 0},
    {"limit: head of 257 bytes -> 431",
     S("GET / HTTP/1.1\r\nX: "
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
       "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"),
     'Q', 431, 0, NULL, NULL, &k_small, 0},

    /* ---- valid responses ---- */
    {"response: 200 OK", S("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"), 'R', 0, 38,
     "200 OK 1", "Content-Length: 2\n", NULL, 0},
    {"response: HTTP/1.0 404", S("HTTP/1.0 404 Not Found\r\n\r\n"), 'R', 0, -1,
     "404 Not Found 0", "", NULL, 0},
    {"response: no SP and no reason", S("HTTP/1.1 204\r\nX: y\r\n\r\n"), 'R', 0, -1, "204  1",
     "X: y\n", NULL, 0},
    {"response: SP and empty reason", S("HTTP/1.1 304 \r\n\r\n"), 'R', 0, -1, "304  1", "",
     NULL, 0},
    {"response: reason with obs-text and HTAB",
     S("HTTP/1.1 200 \xc3\x89tat\tbon  \r\n\r\n"), 'R', 0, -1, "200 \xc3\x89tat\tbon   1", "",
     NULL, 0},
    {"response: 100 Continue", S("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"), 'R', 0,
     25, "100 Continue 1", "", NULL, 0},
    {"response: status 999", S("HTTP/1.1 999 Private\r\n\r\n"), 'R', 0, -1, "999 Private 1", "",
     NULL, 0},

    /* ---- malformed responses: all 502 ---- */
    {"response: status 099", S("HTTP/1.1 099 X\r\n\r\n"), 'R', 502},
    {"response: two-digit status", S("HTTP/1.1 20 OK\r\n\r\n"), 'R', 502},
    {"response: four-digit status", S("HTTP/1.1 2000 OK\r\n\r\n"), 'R', 502},
    {"response: CTL in the reason", S("HTTP/1.1 200 O\x01K\r\n\r\n"), 'R', 502},
    {"response: HTTP/2", S("HTTP/2 200 OK\r\n\r\n"), 'R', 502},
    {"response: HTTP/1.2", S("HTTP/1.2 200 OK\r\n\r\n"), 'R', 502},
    {"response: two spaces before the status", S("HTTP/1.1  200 OK\r\n\r\n"), 'R', 502},
    {"response: bare LF", S("HTTP/1.1 200 OK\nX: y\r\n\r\n"), 'R', 502},
    {"response: obs-fold", S("HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n"), 'R', 502},
    {"response: SP before the colon", S("HTTP/1.1 200 OK\r\nX : y\r\n\r\n"), 'R', 502},
    {"response: NUL in a value", S("HTTP/1.1 200 OK\r\nX: \0\r\n\r\n"), 'R', 502},
    {"response: leading empty line", S("\r\nHTTP/1.1 200 OK\r\n\r\n"), 'R', 502},
    {"response: status-line over 48 bytes",
     S("HTTP/1.1 200 OOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOOO\r\n\r\n"), 'R', 502, 0, NULL, NULL,
     &k_small, 0},
};

typedef struct head_result {
    int rc;
    http1_parser p;
    http1_header h[128];
} head_result;

static int run_head(const impl *im, const head_case *c, http1_parser *p, http1_header *h,
                    const char *buf, size_t len)
{
    return c->kind == 'Q' ? im->parse_request(p, buf, len) : im->parse_response(p, buf, len);
}

static void render_start(const head_case *c, const http1_parser *p, const char *buf, char *out,
                         size_t cap)
{
    if (c->kind == 'Q')
        snprintf(out, cap, "%.*s %.*s %d", (int)p->method.len, buf + p->method.off,
                 (int)p->target.len, buf + p->target.off, p->minor_version);
    else
        snprintf(out, cap, "%d %.*s %d", p->status, (int)p->reason.len, buf + p->reason.off,
                 p->minor_version);
}

static void render_headers(const http1_parser *p, const char *buf, char *out, size_t cap)
{
    size_t used = 0;
    uint32_t i;

    out[0] = 0;
    for (i = 0; i < p->num_headers && used < cap; i++) {
        const http1_header *h = &p->headers[i];
        used += (size_t)snprintf(out + used, cap - used, "%.*s: %.*s\n", (int)h->name.len,
                                 buf + h->name.off, (int)h->value.len, buf + h->value.off);
    }
}

/* Same outcome: return code, error, and every span. */
static int same_outcome(const char *what, size_t split, int rc1, const http1_parser *a,
                        int rc2, const http1_parser *b)
{
    uint32_t i;

    if (rc1 != rc2 || a->err.status != b->err.status ||
        (a->err.reason && b->err.reason && strcmp(a->err.reason, b->err.reason) != 0)) {
        fprintf(stderr, "  %s at %zu: rc %d/%d status %d/%d (%s / %s)\n", what, split, rc1, rc2,
                a->err.status, b->err.status, a->err.reason ? a->err.reason : "-",
                b->err.reason ? b->err.reason : "-");
        return 1;
    }
    if (rc1 < 0)
        return 0;
    if (a->method.off != b->method.off || a->method.len != b->method.len ||
        a->target.off != b->target.off || a->target.len != b->target.len ||
        a->status != b->status || a->reason.off != b->reason.off ||
        a->reason.len != b->reason.len || a->minor_version != b->minor_version ||
        a->num_headers != b->num_headers || a->consumed != b->consumed) {
        fprintf(stderr, "  %s at %zu: start line or counts differ\n", what, split);
        return 1;
    }
    for (i = 0; i < a->num_headers; i++) {
        if (memcmp(&a->headers[i], &b->headers[i], sizeof(http1_header)) != 0) {
            fprintf(stderr, "  %s at %zu: header %u differs\n", what, split, i);
            return 1;
        }
    }
    return 0;
}

static int check_head_case(const impl *im, const head_case *c)
{
    static head_result one, inc;
    uint32_t cap = c->cap ? c->cap : 128;
    const char *buf;
    size_t k, j;
    char got[4096];

    /* one shot */
    buf = place(c->in, c->len);
    im->parser_init(&one.p, one.h, cap, c->limits);
    one.rc = run_head(im, c, &one.p, one.h, buf, c->len);
    if (c->status == 0) {
        long want = c->consumed < 0 ? (long)c->len : c->consumed;
        if (one.rc < 0)
            fprintf(stderr, "  rc %d: %d %s\n", one.rc, one.p.err.status,
                    one.p.err.reason ? one.p.err.reason : "");
        CHECK_EQ(one.rc, want);
        CHECK_EQ(one.p.consumed, want);
        render_start(c, &one.p, buf, got, sizeof(got));
        CHECK_STR(got, c->start);
        render_headers(&one.p, buf, got, sizeof(got));
        CHECK_STR(got, c->headers);
        /* a result > 0 is sticky */
        CHECK_EQ(run_head(im, c, &one.p, one.h, buf, c->len), want);
    } else {
        if (one.rc != HTTP1_ERROR)
            fprintf(stderr, "  rc %d, expected an error %d\n", one.rc, c->status);
        CHECK_EQ(one.rc, HTTP1_ERROR);
        CHECK_EQ(one.p.err.status, c->status);
        CHECK(one.p.err.reason != NULL && one.p.err.reason[0] != 0);
        CHECK_EQ(run_head(im, c, &one.p, one.h, buf, c->len), HTTP1_ERROR);
    }

    /* one byte more per call, each prefix at the guard page */
    im->parser_init(&inc.p, inc.h, cap, c->limits);
    for (k = 1; k <= c->len; k++) {
        buf = place(c->in, k);
        inc.rc = run_head(im, c, &inc.p, inc.h, buf, k);
        if (inc.rc == HTTP1_INCOMPLETE) {
            /* no re-scan: all but the last <= 13 bytes were validated */
            if (k - inc.p.pos_ > 13) {
                fprintf(stderr, "  prefix %zu: resume point %u is too far back\n", k,
                        inc.p.pos_);
                return 1;
            }
            continue;
        }
        break;
    }
    if (k > c->len)
        k = c->len;
    if (inc.rc == HTTP1_ERROR || c->status == 0) {
        if (same_outcome("byte by byte", k, one.rc, &one.p, inc.rc, &inc.p))
            return 1;
    } else {
        fprintf(stderr, "  byte by byte ended with %d at %zu\n", inc.rc, k);
        return 1;
    }

    /* split in two at every offset: prefix, then the whole */
    for (j = 1; j < c->len; j++) {
        im->parser_init(&inc.p, inc.h, cap, c->limits);
        buf = place(c->in, j);
        inc.rc = run_head(im, c, &inc.p, inc.h, buf, j);
        if (inc.rc == HTTP1_ERROR) {
            if (same_outcome("prefix", j, one.rc, &one.p, inc.rc, &inc.p))
                return 1;
            continue;
        }
        if (inc.rc != HTTP1_INCOMPLETE && (long)inc.rc != one.rc) {
            fprintf(stderr, "  prefix %zu: rc %d\n", j, inc.rc);
            return 1;
        }
        buf = place(c->in, c->len);
        inc.rc = run_head(im, c, &inc.p, inc.h, buf, c->len);
        if (same_outcome("split", j, one.rc, &one.p, inc.rc, &inc.p))
            return 1;
    }
    return 0;
}

/* ---- generated heads at the default limits ------------------------------ */

static char g_big[200 * 1024];

/* "GET / HTTP/1.1\r\n" + nfields of "X-N: v\r\n" + padding value + "\r\n" */
static size_t build_head(int nfields, size_t pad)
{
    size_t n = 0;
    int i;

    n += (size_t)sprintf(g_big + n, "GET / HTTP/1.1\r\n");
    for (i = 0; i < nfields; i++)
        n += (size_t)sprintf(g_big + n, "X-%d: v\r\n", i);
    if (pad) {
        n += (size_t)sprintf(g_big + n, "P: ");
        memset(g_big + n, 'p', pad);
        n += pad;
        n += (size_t)sprintf(g_big + n, "\r\n");
    }
    n += (size_t)sprintf(g_big + n, "\r\n");
    return n;
}

static int parse_big(const impl *im, size_t len, http1_parser *p, int byte_by_byte)
{
    static http1_header h[256];
    int rc = HTTP1_INCOMPLETE;
    size_t k;

    im->parser_init(p, h, 256, NULL);
    if (!byte_by_byte)
        return im->parse_request(p, place(g_big, len), len);
    for (k = 1; k <= len && rc == HTTP1_INCOMPLETE; k++)
        rc = im->parse_request(p, place(g_big, k), k);
    return rc;
}

static int case_default_field_count(const impl *im)
{
    http1_parser p;
    size_t n;

    n = build_head(100, 0);
    CHECK_EQ(parse_big(im, n, &p, 0), (long long)n);
    CHECK_EQ(p.num_headers, 100);
    n = build_head(101, 0);
    CHECK_EQ(parse_big(im, n, &p, 0), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 431);
    return 0;
}

static int case_default_head_size(const impl *im)
{
    http1_parser p;
    size_t base = build_head(0, 1), n;

    /* base: a 1-byte pad; grow the pad to make the head exactly 60 KiB */
    n = build_head(0, 1 + HTTP1_DEFAULT_MAX_HEAD_BYTES - base);
    CHECK_EQ(n, HTTP1_DEFAULT_MAX_HEAD_BYTES);
    CHECK_EQ(parse_big(im, n, &p, 0), (long long)n);
    /* the same head fed one byte per call: linear, same result */
    CHECK_EQ(parse_big(im, n, &p, 1), (long long)n);
    n = build_head(0, 2 + HTTP1_DEFAULT_MAX_HEAD_BYTES - base);
    CHECK_EQ(parse_big(im, n, &p, 0), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 431);
    /* with only the first 60 KiB arrived, already 431 (no waiting for more) */
    CHECK_EQ(parse_big(im, HTTP1_DEFAULT_MAX_HEAD_BYTES, &p, 0), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 431);
    CHECK_EQ(parse_big(im, HTTP1_DEFAULT_MAX_HEAD_BYTES - 1, &p, 0), HTTP1_INCOMPLETE);
    return 0;
}

static int case_default_uri_size(const impl *im)
{
    http1_parser p;
    size_t n, t;

    /* a request-line of max_line_bytes - 100: fine */
    t = HTTP1_DEFAULT_MAX_LINE_BYTES - 100 - 13; /* "GET " + " HTTP/1.1" */
    n = (size_t)sprintf(g_big, "GET /");
    memset(g_big + n, 'u', t - 1);
    n += t - 1;
    n += (size_t)sprintf(g_big + n, " HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_EQ(parse_big(im, n, &p, 0), (long long)n);
    CHECK_EQ(p.target.len, t);
    /* one byte over max_line_bytes: 414, complete or not */
    t = HTTP1_DEFAULT_MAX_LINE_BYTES + 1 - 13;
    n = (size_t)sprintf(g_big, "GET /");
    memset(g_big + n, 'u', t - 1);
    n += t - 1;
    n += (size_t)sprintf(g_big + n, " HTTP/1.1\r\nHost: a\r\n\r\n");
    CHECK_EQ(parse_big(im, n, &p, 0), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 414);
    CHECK_EQ(parse_big(im, HTTP1_DEFAULT_MAX_LINE_BYTES, &p, 0), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 414);
    return 0;
}

static int case_resume_contract(const impl *im)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    static const char resp[] = "HTTP/1.1 200 OK\r\nX: yyyyyyy\r\n\r\n";
    http1_parser p;
    http1_header h[8];

    im->parser_init(&p, h, 8, NULL);
    CHECK_EQ(im->parse_request(&p, place(req, 20), 20), HTTP1_INCOMPLETE);
    CHECK_EQ(im->parse_request(&p, place(req, 10), 10), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 500);
    im->parser_init(&p, h, 8, NULL);
    CHECK_EQ(im->parse_response(&p, place(resp, 20), 20), HTTP1_INCOMPLETE);
    CHECK_EQ(im->parse_response(&p, place(resp, 16), 16), HTTP1_ERROR);
    CHECK_EQ(p.err.status, 500);
    /* empty input is simply incomplete */
    im->parser_init(&p, h, 8, NULL);
    CHECK_EQ(im->parse_request(&p, place(req, 0), 0), HTTP1_INCOMPLETE);
    CHECK_EQ(im->parse_response(&p, place(req, 0), 0), HTTP1_INCOMPLETE);
    return 0;
}

/* ---- chunked cases ---------------------------------------------------- */

typedef struct chunk_case {
    const char *name;
    const char *in;
    size_t len;
    int status;       /* 0: valid; else the expected err.status */
    const char *data; /* expected decoded data (valid cases) */
    size_t data_len;
    long consumed;    /* >= 0: that many, body done; -1: all, done; -2: all, not done */
    const http1_limits *limits;
} chunk_case;

static const http1_limits k_trailer_small = {16, 2, 0};

static const chunk_case k_chunks[] = {
    {"chunked: one chunk", S("3\r\nabc\r\n0\r\n\r\n"), 0, S("abc"), -1},
    {"chunked: several, upper and lower hex", S("A\r\n0123456789\r\nb\r\nabcdefghijk\r\n0\r\n\r\n"),
     0, S("0123456789abcdefghijk"), -1},
    {"chunked: leading zeros", S("0003\r\nabc\r\n000\r\n\r\n"), 0, S("abc"), -1},
    {"chunked: extensions", S("3;a=b;c=\"d\\\"e;\";f\r\nabc\r\n0;last\r\n\r\n"), 0, S("abc"),
     -1},
    {"chunked: extensions with BWS", S("3 ;\ta = b ; c\t=\t\"x\"\r\nabc\r\n0 ; z\r\n\r\n"), 0,
     S("abc"), -1},
    {"chunked: data holding CRLF and NUL", S("4\r\n\r\n\0\n\r\n0\r\n\r\n"), 0, S("\r\n\0\n"), -1},
    {"chunked: trailers", S("3\r\nabc\r\n0\r\nT: v\r\nU:\r\n\r\n"), 0, S("abc"), -1},
    {"chunked: bytes after the end are left", S("1\r\nz\r\n0\r\n\r\nGET / HTTP/1.1\r\n"), 0,
     S("z"), 11},
    {"chunked: largest size, incomplete", S("7fffffffffffffff\r\nabc"), 0, S("abc"), -2},
    {"chunked: size 2^63 -> 413", S("8000000000000000\r\n"), 413},
    {"chunked: 17 hex digits -> 413", S("10000000000000000\r\n"), 413},
    {"chunked: 0x prefix", S("0x3\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: negative", S("-1\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: empty size", S("\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: SP before the size", S(" 3\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: SP after the size, no extension", S("3 \r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: empty extension name", S("3;\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: empty extension value", S("3;a=\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: BWS then CRLF after a name", S("3;a \r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: unterminated quoted value", S("3;a=\"b\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: '@' in an extension name", S("3;a@b\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: NUL in an extension", S("3;a=\0\r\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: bare LF after the size", S("3\nabc\r\n0\r\n\r\n"), 400},
    {"chunked: bare CR after the size", S("3\rabc\r\n0\r\n\r\n"), 400},
    {"chunked: data longer than the size", S("3\r\nabcd\r\n0\r\n\r\n"), 400},
    {"chunked: LF only after data", S("3\r\nabc\n0\r\n\r\n"), 400},
    {"chunked: trailer obs-fold", S("0\r\nT: v\r\n w\r\n\r\n"), 400},
    {"chunked: trailer SP before colon", S("0\r\nT : v\r\n\r\n"), 400},
    {"chunked: trailer without colon", S("0\r\nT\r\n\r\n"), 400},
    {"chunked: trailer CTL", S("0\r\nT: \x01\r\n\r\n"), 400},
    {"chunked: bare CR at the end", S("0\r\n\r\r\n"), 400},
    {"chunked: trailers over 16 bytes -> 431", S("0\r\nTTTTTTTT: vvvvvvv\r\n\r\n"), 431, NULL,
     0, 0, &k_trailer_small},
    {"chunked: 3 trailers over 2 -> 431", S("0\r\nA:\r\nB:\r\nC:\r\n\r\n"), 431, NULL, 0, 0,
     &k_trailer_small},
};

typedef struct chunk_out {
    int64_t consumed;
    int rc; /* 0 or HTTP1_ERROR */
    http1_chunked d;
    char data[8192];
    size_t data_len;
} chunk_out;

/* Feeds in[0..len) in pieces ending at the offsets cuts[0..ncuts) (the last
 * cut being len), each piece at the guard; spans_cap per call. */
static void chunk_feed(const impl *im, const chunk_case *c, const size_t *cuts, size_t ncuts,
                       size_t spans_cap, chunk_out *o)
{
    http1_span spans[64];
    size_t start = 0, i;

    im->chunked_init(&o->d, c->limits);
    o->consumed = 0;
    o->rc = 0;
    o->data_len = 0;
    for (i = 0; i < ncuts && !o->d.done; i++) {
        size_t end = cuts[i];
        while (start < end && !o->d.done) {
            const char *buf = place(c->in + start, end - start);
            size_t ns = 0, s;
            int64_t r = im->chunked_decode(&o->d, buf, end - start, spans, spans_cap, &ns);
            if (r < 0) {
                o->rc = HTTP1_ERROR;
                return;
            }
            for (s = 0; s < ns; s++) {
                if (o->data_len + spans[s].len <= sizeof(o->data))
                    memcpy(o->data + o->data_len, buf + spans[s].off, spans[s].len);
                o->data_len += spans[s].len;
            }
            start += (size_t)r;
            o->consumed += r;
            if (r == 0 && !o->d.done)
                break; /* needs more input */
        }
    }
}

static int chunk_expect(const chunk_case *c, const chunk_out *o, const char *how)
{
    if (c->status) {
        if (o->rc != HTTP1_ERROR || o->d.err.status != c->status) {
            fprintf(stderr, "  %s: rc %d status %d, expected %d\n", how, o->rc,
                    o->d.err.status, c->status);
            return 1;
        }
        return 0;
    }
    if (o->rc != 0) {
        fprintf(stderr, "  %s: error %d %s\n", how, o->d.err.status, o->d.err.reason);
        return 1;
    }
    if (o->consumed != (c->consumed < 0 ? (int64_t)c->len : c->consumed) ||
        o->data_len != c->data_len || memcmp(o->data, c->data, c->data_len) != 0) {
        fprintf(stderr, "  %s: consumed %lld, %zu data bytes\n", how, (long long)o->consumed,
                o->data_len);
        return 1;
    }
    if (o->d.done != (c->consumed != -2)) {
        fprintf(stderr, "  %s: done = %d\n", how, o->d.done);
        return 1;
    }
    return 0;
}

static int check_chunk_case(const impl *im, const chunk_case *c)
{
    static chunk_out o;
    static size_t cuts[8192];
    size_t k;

    /* whole, 64 spans per call */
    cuts[0] = c->len;
    chunk_feed(im, c, cuts, 1, 64, &o);
    if (chunk_expect(c, &o, "whole"))
        return 1;
    /* whole, one span per call */
    chunk_feed(im, c, cuts, 1, 1, &o);
    if (chunk_expect(c, &o, "one span per call"))
        return 1;
    /* one byte per call */
    for (k = 0; k < c->len; k++)
        cuts[k] = k + 1;
    chunk_feed(im, c, cuts, c->len, 64, &o);
    if (chunk_expect(c, &o, "byte by byte"))
        return 1;
    /* split in two at every offset */
    for (k = 1; k < c->len; k++) {
        char how[64];
        cuts[0] = k;
        cuts[1] = c->len;
        chunk_feed(im, c, cuts, 2, 64, &o);
        snprintf(how, sizeof(how), "split at %zu", k);
        if (chunk_expect(c, &o, how))
            return 1;
    }
    return 0;
}

static int case_chunk_line_limit(const impl *im)
{
    http1_chunked d;
    http1_span sp[4];
    size_t ns, n;
    const char *buf;

    /* a size line of exactly 4096 bytes (CRLF included) is accepted */
    n = (size_t)sprintf(g_big, "3;x=");
    memset(g_big + n, 'v', HTTP1_MAX_CHUNK_LINE_BYTES - n - 2);
    n = HTTP1_MAX_CHUNK_LINE_BYTES - 2;
    n += (size_t)sprintf(g_big + n, "\r\nabc\r\n0\r\n\r\n");
    im->chunked_init(&d, NULL);
    buf = place(g_big, n);
    CHECK_EQ(im->chunked_decode(&d, buf, n, sp, 4, &ns), (long long)n);
    CHECK_EQ(d.done, 1);
    CHECK_EQ(ns, 1);
    CHECK_EQ(sp[0].len, 3);
    /* one byte more is not */
    n = (size_t)sprintf(g_big, "3;x=");
    memset(g_big + n, 'v', HTTP1_MAX_CHUNK_LINE_BYTES - n - 1);
    n = HTTP1_MAX_CHUNK_LINE_BYTES - 1;
    n += (size_t)sprintf(g_big + n, "\r\nabc\r\n0\r\n\r\n");
    im->chunked_init(&d, NULL);
    CHECK_EQ(im->chunked_decode(&d, place(g_big, n), n, sp, 4, &ns), HTTP1_ERROR);
    CHECK_EQ(d.err.status, 400);
    /* and an error is sticky */
    CHECK_EQ(im->chunked_decode(&d, place(g_big, 1), 1, sp, 4, &ns), HTTP1_ERROR);
    return 0;
}

static int case_chunk_big_body(const impl *im)
{
    /* 3 chunks of 40000 bytes, fed in 1000-byte pieces */
    static char body[130000];
    http1_chunked d;
    http1_span sp[2];
    size_t n = 0, i, off = 0, got = 0, ns;

    for (i = 0; i < 3; i++) {
        n += (size_t)sprintf(body + n, "9c40\r\n");
        memset(body + n, 'a' + (int)i, 40000);
        n += 40000;
        n += (size_t)sprintf(body + n, "\r\n");
    }
    n += (size_t)sprintf(body + n, "0\r\n\r\n");
    im->chunked_init(&d, NULL);
    while (off < n && !d.done) {
        size_t piece = n - off < 1000 ? n - off : 1000;
        const char *buf = place(body + off, piece);
        int64_t r = im->chunked_decode(&d, buf, piece, sp, 2, &ns);
        CHECK(r > 0);
        for (i = 0; i < ns; i++) {
            size_t s;
            for (s = 0; s < sp[i].len; s++)
                CHECK(buf[sp[i].off + s] == 'a' + (int)((got + s) / 40000));
            got += sp[i].len;
        }
        off += (size_t)r;
    }
    CHECK_EQ(d.done, 1);
    CHECK_EQ(off, n);
    CHECK_EQ(got, 120000);
    CHECK_EQ(d.body_bytes, 120000);
    return 0;
}

/* ---- framing cases ----------------------------------------------------- */

typedef struct framing_case {
    const char *name;
    const char *in;
    size_t len;
    char kind;        /* 'Q' request; 'R' response */
    int req_head;     /* response: the request was HEAD */
    int req_connect;  /* response: the request was CONNECT */
    int status;       /* 0: ok; else the expected err.status */
    int body;
    long long content_length;
    int keep_alive;
    const char *flags;  /* c close, k keep-alive, u conn upgrade, U upgrade,
                           e 100-continue, x other expectation */
    const char *tokens; /* Connection options, comma-joined */
} framing_case;

#define NONE HTTP1_BODY_NONE
#define LEN HTTP1_BODY_LENGTH
#define CHUNKED HTTP1_BODY_CHUNKED
#define CLOSE HTTP1_BODY_UNTIL_CLOSE
#define TUNNEL HTTP1_BODY_TUNNEL
#define Q(lit) S("POST / HTTP/1.1\r\nHost: a\r\n" lit "\r\n"), 'Q', 0, 0
#define Q10(lit) S("POST / HTTP/1.0\r\n" lit "\r\n"), 'Q', 0, 0
#define R(lit) S("HTTP/1.1 200 OK\r\n" lit "\r\n"), 'R', 0, 0

static const framing_case k_framing[] = {
    {"framing: no body", Q(""), 0, NONE, 0, 1, "", ""},
    {"framing: Content-Length", Q("Content-Length: 10\r\n"), 0, LEN, 10, 1, "", ""},
    {"framing: Content-Length 0", Q("Content-Length: 0\r\n"), 0, NONE, 0, 1, "", ""},
    {"framing: Content-Length leading zeros", Q("Content-Length: 007\r\n"), 0, LEN, 7, 1, "", ""},
    {"framing: Content-Length 2^63-1", Q("Content-Length: 9223372036854775807\r\n"), 0, LEN,
     9223372036854775807LL, 1, "", ""},
    {"framing: Content-Length 2^63 -> 413", Q("Content-Length: 9223372036854775808\r\n"), 413},
    {"framing: Content-Length 10^22 -> 413", Q("Content-Length: 10000000000000000000000\r\n"),
     413},
    {"framing: duplicate equal Content-Length", Q("Content-Length: 3\r\nContent-Length: 3\r\n"),
     400},
    {"framing: differing Content-Length", Q("Content-Length: 3\r\ncontent-length: 4\r\n"), 400},
    {"framing: Content-Length list", Q("Content-Length: 3, 3\r\n"), 400},
    {"framing: Content-Length +3", Q("Content-Length: +3\r\n"), 400},
    {"framing: Content-Length -1", Q("Content-Length: -1\r\n"), 400},
    {"framing: Content-Length 0x10", Q("Content-Length: 0x10\r\n"), 400},
    {"framing: Content-Length empty", Q("Content-Length:\r\n"), 400},
    {"framing: Content-Length with inner SP", Q("Content-Length: 1 2\r\n"), 400},
    {"framing: chunked", Q("Transfer-Encoding: chunked\r\n"), 0, CHUNKED, 0, 1, "", ""},
    {"framing: CHUNKED", Q("transfer-encoding: CHUNKED\r\n"), 0, CHUNKED, 0, 1, "", ""},
    {"framing: gzip, chunked", Q("Transfer-Encoding: gzip, chunked\r\n"), 0, CHUNKED, 0, 1, "",
     ""},
    {"framing: codings on two lines", Q("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
     0, CHUNKED, 0, 1, "", ""},
    {"framing: empty list elements", Q("Transfer-Encoding: , gzip ,, chunked ,\r\n"), 0, CHUNKED,
     0, 1, "", ""},
    {"framing: coding parameters", Q("Transfer-Encoding: gzip;level=1;x=\"a b\", chunked\r\n"), 0,
     CHUNKED, 0, 1, "", ""},
    {"framing: gzip only -> 400", Q("Transfer-Encoding: gzip\r\n"), 400},
    {"framing: chunked, gzip -> 400", Q("Transfer-Encoding: chunked, gzip\r\n"), 400},
    {"framing: chunked twice -> 400", Q("Transfer-Encoding: chunked, chunked\r\n"), 400},
    {"framing: chunked on two lines twice -> 400",
     Q("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400},
    {"framing: unknown coding -> 501", Q("Transfer-Encoding: foo, chunked\r\n"), 501},
    {"framing: unknown coding last -> 400", Q("Transfer-Encoding: foo\r\n"), 400},
    {"framing: chunked with parameters -> 400", Q("Transfer-Encoding: chunked;q=1\r\n"), 400},
    {"framing: empty Transfer-Encoding -> 400", Q("Transfer-Encoding:\r\n"), 400},
    {"framing: Transfer-Encoding syntax -> 400", Q("Transfer-Encoding: chun ked\r\n"), 400},
    {"framing: Transfer-Encoding bad parameter -> 400", Q("Transfer-Encoding: gzip;x, chunked\r\n"),
     400},
    {"framing: Content-Length and Transfer-Encoding -> 400",
     Q("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n"), 400},
    {"framing: Transfer-Encoding in HTTP/1.0 -> 400", Q10("Transfer-Encoding: chunked\r\n"), 400},
    {"framing: HTTP/1.0 without Host", Q10("Content-Length: 1\r\n"), 0, LEN, 1, 0, "", ""},
    {"framing: missing Host -> 400", S("GET / HTTP/1.1\r\nX: y\r\n\r\n"), 'Q', 0, 0, 400},
    {"framing: two Host -> 400", Q("Host: b\r\n"), 400},
    {"framing: Host with a space -> 400", S("GET / HTTP/1.1\r\nHost: a b\r\n\r\n"), 'Q', 0, 0,
     400},
    {"framing: Host with '/' -> 400", S("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"), 'Q', 0, 0, 400},
    {"framing: Host with '@' -> 400", S("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"), 'Q', 0, 0, 400},
    {"framing: Host IPv6 and port", S("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"), 'Q', 0, 0, 0,
     NONE, 0, 1, "", ""},
    {"framing: empty Host", S("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 'Q', 0, 0, 0, NONE, 0, 1, "",
     ""},
    {"framing: Connection: close", Q("Connection: close\r\n"), 0, NONE, 0, 0, "c", "close"},
    {"framing: Connection list", Q("Connection: Keep-Alive, , X-Foo ,close\r\nConnection: te\r\n"),
     0, NONE, 0, 0, "ck", "Keep-Alive,X-Foo,close,te"},
    {"framing: HTTP/1.0 keep-alive", Q10("Connection: keep-alive\r\n"), 0, NONE, 0, 1, "k",
     "keep-alive"},
    {"framing: HTTP/1.0 default close", Q10(""), 0, NONE, 0, 0, "", ""},
    {"framing: Connection not a token list -> 400", Q("Connection: a b\r\n"), 400},
    {"framing: Connection with '/' -> 400", Q("Connection: a/b\r\n"), 400},
    {"framing: 16 Connection options",
     Q("Connection: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p\r\n"), 0, NONE, 0, 1, "",
     "a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p"},
    {"framing: 17 Connection options -> 400",
     Q("Connection: a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q\r\n"), 400},
    {"framing: Upgrade", S("GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
     'Q', 0, 0, 0, NONE, 0, 1, "uU", "Upgrade"},
    {"framing: Upgrade without Connection", S("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"),
     'Q', 0, 0, 0, NONE, 0, 1, "", ""},
    {"framing: Upgrade in HTTP/1.0 is ignored",
     S("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"), 'Q', 0, 0, 0,
     NONE, 0, 0, "u", "upgrade"},
    {"framing: Expect: 100-continue", Q("Expect: 100-Continue\r\nContent-Length: 5\r\n"), 0, LEN, 5,
     1, "e", ""},
    {"framing: other expectation", Q("Expect: foo\r\n"), 0, NONE, 0, 1, "x", ""},
    {"framing: Expect in HTTP/1.0 is ignored", Q10("Expect: 100-continue\r\n"), 0, NONE, 0, 0,
     "", ""},
    {"framing: CONNECT", S("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"), 'Q', 0, 0, 0,
     TUNNEL, 0, 1, "", ""},
    {"framing: CONNECT with Content-Length 0",
     S("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 0\r\n\r\n"), 'Q', 0, 0, 0,
     TUNNEL, 0, 1, "", ""},
    {"framing: CONNECT with a body -> 400",
     S("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\nContent-Length: 5\r\n\r\n"), 'Q', 0, 0, 400},

    {"framing: response Content-Length", R("Content-Length: 5\r\n"), 0, LEN, 5, 1, "", ""},
    {"framing: response without framing", R(""), 0, CLOSE, 0, 0, "", ""},
    {"framing: response chunked", R("Transfer-Encoding: chunked\r\n"), 0, CHUNKED, 0, 1, "", ""},
    {"framing: response unknown coding, chunked", R("Transfer-Encoding: br2, chunked\r\n"), 0,
     CHUNKED, 0, 1, "", ""},
    {"framing: response gzip only", R("Transfer-Encoding: gzip\r\n"), 0, CLOSE, 0, 0, "", ""},
    {"framing: response CL + TE -> 502", R("Content-Length: 1\r\nTransfer-Encoding: chunked\r\n"),
     502},
    {"framing: response duplicate CL -> 502", R("Content-Length: 1\r\nContent-Length: 1\r\n"), 502},
    {"framing: response bad CL -> 502", R("Content-Length: x\r\n"), 502},
    {"framing: response 204", S("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"), 'R', 0,
     0, 0, NONE, 0, 1, "", ""},
    {"framing: response 304", S("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n"), 'R', 0,
     0, 0, NONE, 0, 1, "", ""},
    {"framing: response 100", S("HTTP/1.1 100 Continue\r\n\r\n"), 'R', 0, 0, 0, NONE, 0, 1, "",
     ""},
    {"framing: response to HEAD", S("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"), 'R', 1, 0, 0,
     NONE, 0, 1, "", ""},
    {"framing: response 101",
     S("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
     'R', 0, 0, 0, TUNNEL, 0, 0, "uU", "Upgrade"},
    {"framing: response 200 to CONNECT", S("HTTP/1.1 200 OK\r\n\r\n"), 'R', 0, 1, 0, TUNNEL, 0,
     0, "", ""},
    {"framing: response 407 to CONNECT", S("HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n"), 'R',
     0, 1, 0, NONE, 0, 1, "", ""},
    {"framing: HTTP/1.0 response keep-alive",
     S("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n"), 'R', 0, 0, 0,
     LEN, 1, 1, "k", "keep-alive"},
    {"framing: HTTP/1.0 response with TE -> 502",
     S("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 'R', 0, 0, 502},
};

static int check_framing_case(const impl *im, const framing_case *c)
{
    http1_parser p;
    http1_header h[32];
    http1_framing f;
    const char *buf = place(c->in, c->len);
    char flags[16], tokens[256];
    int rc, n = 0;
    uint32_t i;
    size_t used = 0;

    im->parser_init(&p, h, 32, NULL);
    rc = c->kind == 'Q' ? im->parse_request(&p, buf, c->len) : im->parse_response(&p, buf, c->len);
    if (rc < 0)
        fprintf(stderr, "  head: %s\n", p.err.reason);
    CHECK_EQ(rc, (long long)c->len);
    if (c->kind == 'Q')
        rc = im->request_framing(buf, p.method, p.minor_version, h, p.num_headers, &f);
    else
        rc = im->response_framing(buf, p.status, p.minor_version, c->req_head, c->req_connect, h,
                                  p.num_headers, &f);
    if (c->status) {
        if (rc == 0)
            fprintf(stderr, "  accepted, body %d\n", f.body);
        CHECK_EQ(rc, HTTP1_ERROR);
        CHECK_EQ(f.err.status, c->status);
        CHECK(f.err.reason != NULL);
        return 0;
    }
    if (rc != 0)
        fprintf(stderr, "  error %d %s\n", f.err.status, f.err.reason);
    CHECK_EQ(rc, 0);
    CHECK_EQ(f.body, c->body);
    if (c->body == LEN)
        CHECK_EQ(f.content_length, c->content_length);
    CHECK_EQ(f.keep_alive, c->keep_alive);
    if (f.conn_close)
        flags[n++] = 'c';
    if (f.conn_keep_alive)
        flags[n++] = 'k';
    if (f.conn_upgrade)
        flags[n++] = 'u';
    if (f.upgrade)
        flags[n++] = 'U';
    if (f.expect_continue)
        flags[n++] = 'e';
    if (f.expect_other)
        flags[n++] = 'x';
    flags[n] = 0;
    CHECK_STR(flags, c->flags);
    tokens[0] = 0;
    for (i = 0; i < f.num_conn_tokens; i++)
        used += (size_t)snprintf(tokens + used, sizeof(tokens) - used, "%s%.*s", i ? "," : "",
                                 (int)f.conn_tokens[i].len, buf + f.conn_tokens[i].off);
    CHECK_STR(tokens, c->tokens);
    return 0;
}

/* ---- misc ---------------------------------------------------------------- */

static int case_guard_page_traps(const impl *im)
{
    pid_t pid = fork();
    int st = 0;

    CHECK(pid >= 0);
    if (pid == 0) {
        volatile const char *p = tk_guard_end(&g_arena);
        signal(SIGSEGV, SIG_DFL);
        (void)*p;
        _exit(0);
    }
    CHECK(waitpid(pid, &st, 0) == pid);
    CHECK(!(WIFEXITED(st) && WEXITSTATUS(st) == 0));
    return 0;
}

static int case_span_ieq(const impl *im)
{
    static const char b[] = "xContent-LENGTHy";
    http1_span s = {1, 14};

    CHECK(http1_span_ieq(b, s, "content-length", 14));
    CHECK(!http1_span_ieq(b, s, "content-lengtH", 14));
    CHECK(!http1_span_ieq(b, s, "content-len", 11));
    return 0;
}

static void run_impl(const impl *im)
{
    const char *tag = im->simd();
    size_t i;

    for (i = 0; i < sizeof(k_heads) / sizeof(k_heads[0]); i++)
        tk_report(tag, k_heads[i].name, check_head_case(im, &k_heads[i]));
    tk_report(tag, "limit: 100 fields ok, 101 -> 431 (defaults)", case_default_field_count(im));
    tk_report(tag, "limit: 60 KiB head ok (whole and byte by byte), one more -> 431",
           case_default_head_size(im));
    tk_report(tag, "limit: 60 KiB - 100 request-line ok, 60 KiB + 1 -> 414 (defaults)", case_default_uri_size(im));
    tk_report(tag, "resume: shrinking buffer -> 500, empty input incomplete",
           case_resume_contract(im));
    for (i = 0; i < sizeof(k_chunks) / sizeof(k_chunks[0]); i++)
        tk_report(tag, k_chunks[i].name, check_chunk_case(im, &k_chunks[i]));
    tk_report(tag, "chunked: size line limit 4096", case_chunk_line_limit(im));
    tk_report(tag, "chunked: 120 kB body in 1000-byte pieces, 2 spans per call",
           case_chunk_big_body(im));
    for (i = 0; i < sizeof(k_framing) / sizeof(k_framing[0]); i++)
        tk_report(tag, k_framing[i].name, check_framing_case(im, &k_framing[i]));
}

int main(void)
{
    tk_guard_init(&g_arena, 256u * 1024u);
    tk_report("setup", "guard page traps over-reads", case_guard_page_traps(&k_linked));
    tk_report("setup", "http1_span_ieq", case_span_ieq(&k_linked));
    run_impl(&k_linked);
#ifdef TK_HTTP1_HAVE_ALT
    if (strcmp(k_alt.simd(), "sse4.2") != 0 || __builtin_cpu_supports("sse4.2"))
        run_impl(&k_alt);
    else
        printf("[setup] the CPU has no SSE4.2: the sse4.2 copy is not run\n");
#else
    printf("[setup] no second scanner copy with this compiler: only %s is tested\n",
           k_linked.simd());
#endif
    return tk_finish();
}
