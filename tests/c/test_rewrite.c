/* test_rewrite.c - csrc/rewrite.c under ASan/UBSan, with guard pages.
 *
 * A table of cases; each prints "<name> ok" or "<name> FAIL" (the failed
 * check above it). The last line is "N passed, M failed"; the exit status is
 * nonzero if any case failed.
 *
 * Every head case:
 *   - places its input so that it ends at a PROT_NONE page, parses it with
 *     http1.c (head + framing), and rewrites it;
 *   - asks for the size (out NULL, cap 0): -(expected length);
 *   - for EVERY cap below the expected length, places an output buffer of
 *     exactly cap bytes before a PROT_NONE page: -(expected length), and no
 *     write past the end (it would crash);
 *   - with exactly the expected length before the guard page: the exact
 *     expected bytes;
 *   - with room to spare: nothing written after the returned length;
 *   - parses its own output again with http1.c: one whole, valid head.
 */
#include "testkit.h"

#include "rewrite.h"

/* The tables leave trailing fields to their zero default. */
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

/* Guard arenas for inputs and outputs: 64 KiB each, then a PROT_NONE page. */
static tk_guard g_in, g_out;

/* Prints a head with CR LF visible, for failure messages. */
static void show(const char *label, const char *s, size_t n)
{
    size_t i;

    fprintf(stderr, "  %s: \"", label);
    for (i = 0; i < n; i++) {
        if (s[i] == '\r')
            fputs("\\r", stderr);
        else if (s[i] == '\n')
            fputs("\\n", stderr);
        else
            fputc(s[i], stderr);
    }
    fputs("\"\n", stderr);
}

/* ---- fixtures ------------------------------------------------------------ */

#define STR(lit) {lit, sizeof(lit) - 1}

static const uint8_t k_rid[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
#define RID "00010203-0405-4607-8809-0a0b0c0d0e0f"

/* contexts */
static const rw_ctx k_proxy = {.version_minor = 1, .peer = STR("10.0.0.9"),
                               .proto = STR("https"), .request_id = k_rid};
static const rw_ctx k_close = {.version_minor = 1, .connection = RW_CONN_CLOSE};
static const rw_ctx k_keep_alive_10 = {.version_minor = 0, .connection = RW_CONN_KEEP_ALIVE};
static const rw_ctx k_upgrade = {.version_minor = 1, .connection = RW_CONN_UPGRADE};
static const rw_ctx k_reframe = {.version_minor = 1, .flags = RW_DROP_TRANSFER_ENCODING,
                                 .extra = STR("Content-Length: 5\r\nX-Reframed: 1\r\n")};
static const rw_ctx k_default_host = {.version_minor = 1, .default_host = STR("10.1.2.3:8080")};
static const rw_ctx k_v10 = {.version_minor = 0};
static const rw_ctx k_ipv6_peer = {.version_minor = 1, .peer = STR("2001:db8::1")};
/* contexts that break the contract: the call returns 0 */
static const rw_ctx k_bad_peer = {.version_minor = 1, .peer = STR("1.1.1.1, 6.6.6.6")};
static const rw_ctx k_bad_proto = {.version_minor = 1, .proto = STR("ht tp")};
static const rw_ctx k_bad_version = {.version_minor = 2};
static const rw_ctx k_bad_connection = {.version_minor = 1, .connection = 9};
static const rw_ctx k_bad_flags = {.version_minor = 1, .flags = 0x80};
static const rw_ctx k_bad_host = {.version_minor = 1, .default_host = STR("a b")};
static const rw_ctx k_extra_empty_line = {.version_minor = 1, .extra = STR("\r\n")};
static const rw_ctx k_extra_no_crlf = {.version_minor = 1, .extra = STR("X-A: 1")};
static const rw_ctx k_extra_bare_lf = {.version_minor = 1, .extra = STR("X-A: 1\nX-B: 2\r\n")};
static const rw_ctx k_extra_fold = {.version_minor = 1, .extra = STR("X-A: 1\r\n folded\r\n")};
static const rw_ctx k_extra_second_head = {
    .version_minor = 1, .extra = STR("X-A: 1\r\n\r\nGET /smuggled HTTP/1.1\r\n")};
static const rw_ctx k_extra_space_colon = {.version_minor = 1, .extra = STR("X-A : 1\r\n")};

/* route operations */
static const rw_field k_set[] = {{STR("X-Env"), STR("prod")}, {STR("x-new"), STR("n")}};
static const rw_field k_add[] = {{STR("X-Added"), STR("a1")}, {STR("x-added"), STR("a2")}};
static const rw_str k_remove[] = {STR("x-secret"), STR("COOKIE")};
static const rw_ops k_ops = {k_set, 2, k_add, 2, k_remove, 2};

static const rw_field k_set_xfp[] = {{STR("X-Forwarded-Proto"), STR("http")}};
static const rw_str k_remove_proxy[] = {STR("x-forwarded-for"), STR("x-request-id")};
static const rw_ops k_ops_proxy = {k_set_xfp, 1, NULL, 0, k_remove_proxy, 2};

static const rw_field k_add_xa[] = {{STR("X-A"), STR("mine")}};
static const rw_str k_remove_xa[] = {STR("x-a")};
static const rw_ops k_ops_remove_add = {NULL, 0, k_add_xa, 1, k_remove_xa, 1};

static const rw_field k_set_hop[] = {{STR("X-Hop"), STR("set")}};
static const rw_ops k_ops_set_hop = {k_set_hop, 1};

static const rw_ops k_prefix = {.rewrite_path = 1, .path_prefix_len = 7, .path = STR("/v2")};
static const rw_ops k_whole = {.rewrite_path = 1, .path_prefix_len = RW_PATH_WHOLE,
                               .path = STR("/new")};
static const rw_ops k_strip = {.rewrite_path = 1, .path_prefix_len = 4, .path = STR("")};
static const rw_ops k_authority = {.rewrite_authority = 1, .authority = STR("b.example:8080")};
static const rw_ops k_both = {.rewrite_path = 1, .path_prefix_len = 1, .path = STR("/v1/"),
                              .rewrite_authority = 1, .authority = STR("svc")};

/* ---- head cases -------------------------------------------------------- */

typedef struct rw_case {
    const char *name;
    char kind;          /* 'Q' request, 'R' response */
    const char *in;
    const rw_ops *ops;  /* NULL: none */
    const rw_ctx *ctx;  /* NULL: rw_ctx_init's defaults */
    const char *want;   /* NULL: the call must return 0 (contract broken) */
} rw_case;

#define HOST_A "Host: a\r\n"

static const rw_case k_cases[] = {
    /* ---- requests: what is kept ---- */
    {"request: minimal, unchanged", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL, NULL,
     "GET / HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: case, order and duplicates kept; OWS normalised", 'Q',
     "GET /p?q=1&r HTTP/1.1\r\nHOST: a\r\nX-Custom-Header:  v1 \r\naccept: */*\r\n"
     "X-Dup: 1\r\nEmpty:\r\nx-dup: 2\r\nContent-Length: 0\r\n\r\n",
     NULL, NULL,
     "GET /p?q=1&r HTTP/1.1\r\nHOST: a\r\nX-Custom-Header: v1\r\naccept: */*\r\n"
     "X-Dup: 1\r\nEmpty:\r\nx-dup: 2\r\nContent-Length: 0\r\n\r\n"},
    {"request: body bytes after the head are not copied", 'Q',
     "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", NULL, NULL,
     "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n"},
    {"request: obs-text value kept byte for byte", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9 \xff\r\n\r\n", NULL, NULL,
     "GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9 \xff\r\n\r\n"},
    /* ---- requests: hop-by-hop ---- */
    {"request: hop-by-hop and Connection-named fields dropped", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: 115\r\n"
     "Proxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\n"
     "x-hop: 1\r\nX-Keep: 2\r\n\r\n",
     NULL, NULL, "GET / HTTP/1.1\r\nHost: a\r\nX-Keep: 2\r\n\r\n"},
    {"request: Connection cannot remove Host, Transfer-Encoding (smuggling)", 'Q',
     "POST / HTTP/1.1\r\nHost: a\r\nConnection: host, transfer-encoding, x-gone\r\n"
     "Transfer-Encoding: chunked\r\nX-Gone: 1\r\n\r\n",
     NULL, NULL, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"},
    {"request: Connection cannot remove Content-Length (smuggling)", 'Q',
     "POST / HTTP/1.1\r\nHost: a\r\nConnection: Content-Length\r\nContent-Length: 3\r\n\r\nabc",
     NULL, NULL, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"},
    {"request: upgrading keeps Upgrade and says Connection: upgrade", 'Q',
     "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
     "Sec-WebSocket-Key: dGhl\r\nSec-WebSocket-Version: 13\r\n\r\n",
     NULL, &k_upgrade,
     "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhl\r\n"
     "Sec-WebSocket-Version: 13\r\nConnection: upgrade\r\n\r\n"},
    {"request: re-framing drops Transfer-Encoding, extra lines appended", 'Q',
     "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nX-B: 1\r\n\r\n", NULL,
     &k_reframe,
     "POST / HTTP/1.1\r\nHost: a\r\nX-B: 1\r\nContent-Length: 5\r\nX-Reframed: 1\r\n\r\n"},
    {"request: Connection: close written", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", NULL, &k_close,
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"},
    /* ---- requests: the proxy's fields ---- */
    {"request: x-forwarded-for/-proto/x-request-id added", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL, &k_proxy,
     "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: https\r\n"
     "x-request-id: " RID "\r\n\r\n"},
    {"request: peer appended to the LAST x-forwarded-for, proto replaced in place", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: http\r\n"
     "x-forwarded-for: 2.2.2.2, 3.3.3.3\r\nX-Request-ID: abc\r\nx-forwarded-proto: ws\r\n\r\n",
     NULL, &k_proxy,
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\n"
     "x-forwarded-for: 2.2.2.2, 3.3.3.3, 10.0.0.9\r\nX-Request-ID: abc\r\n\r\n"},
    {"request: empty x-forwarded-for gets the peer alone", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For:\r\n\r\n", NULL, &k_ipv6_peer,
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 2001:db8::1\r\n\r\n"},
    {"request: fields named by Connection count as absent", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-forwarded-for, X-Request-Id\r\n"
     "X-Forwarded-For: 6.6.6.6\r\nx-request-id: forged\r\n\r\n",
     NULL, &k_proxy,
     "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-for: 10.0.0.9\r\nx-forwarded-proto: https\r\n"
     "x-request-id: " RID "\r\n\r\n"},
    {"request: route ops win over the proxy's fields", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nx-forwarded-proto: ws\r\n\r\n",
     &k_ops_proxy, &k_proxy,
     "GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-proto: http\r\n\r\n"},
    /* ---- requests: route operations ---- */
    {"request: set in place / appended, add, remove (case-insensitive)", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nx-env: dev\r\nCookie: c=1\r\nX-ENV: qa\r\nX-Secret: s\r\n"
     "X-Added: old\r\nAccept: */*\r\n\r\n",
     &k_ops, NULL,
     "GET / HTTP/1.1\r\nHost: a\r\nx-env: prod\r\nX-Added: old\r\nAccept: */*\r\n"
     "x-new: n\r\nX-Added: a1\r\nx-added: a2\r\n\r\n"},
    {"request: removed then added: only the added one", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nX-A: theirs\r\nx-a: theirs2\r\n\r\n", &k_ops_remove_add, NULL,
     "GET / HTTP/1.1\r\nHost: a\r\nX-A: mine\r\n\r\n"},
    {"request: set on a Connection-named field is appended", 'Q',
     "GET / HTTP/1.1\r\nHost: a\r\nConnection: x-hop\r\nX-Hop: theirs\r\nX-B: b\r\n\r\n",
     &k_ops_set_hop, NULL, "GET / HTTP/1.1\r\nHost: a\r\nX-B: b\r\nX-Hop: set\r\n\r\n"},
    /* ---- requests: target and Host ---- */
    {"request: prefix rewrite keeps the rest and the query", 'Q',
     "GET /api/v1/users?id=7 HTTP/1.1\r\nHost: a\r\n\r\n", &k_prefix, NULL,
     "GET /v2/users?id=7 HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: prefix longer than the path replaces it whole", 'Q',
     "GET /api HTTP/1.1\r\nHost: a\r\n\r\n", &k_prefix, NULL,
     "GET /v2 HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: whole-path rewrite keeps the query", 'Q',
     "GET /old/x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n", &k_whole, NULL,
     "GET /new?q=1 HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: stripping a prefix to nothing leaves /", 'Q',
     "GET /foo?x HTTP/1.1\r\nHost: a\r\n\r\n", &k_strip, NULL,
     "GET /?x HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: stripping a prefix gets a leading /", 'Q', "GET /foobar HTTP/1.1\r\nHost: a\r\n\r\n",
     &k_strip, NULL, "GET /bar HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: authority rewrite in place, name case kept", 'Q',
     "GET / HTTP/1.1\r\nX-A: 1\r\nhost: a\r\nX-B: 2\r\n\r\n", &k_authority, NULL,
     "GET / HTTP/1.1\r\nX-A: 1\r\nhost: b.example:8080\r\nX-B: 2\r\n\r\n"},
    {"request: prefix \"/\" and authority rewritten together", 'Q',
     "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", &k_both, NULL,
     "GET /v1/x HTTP/1.1\r\nHost: svc\r\n\r\n"},
    {"request: absolute-form becomes origin-form; its authority is the Host", 'Q',
     "GET http://b.example:81/p?q=1 HTTP/1.1\r\nHost: ignored\r\nX: 1\r\n\r\n", NULL,
     NULL, "GET /p?q=1 HTTP/1.1\r\nHost: b.example:81\r\nX: 1\r\n\r\n"},
    {"request: absolute-form with userinfo is refused", 'Q',
     "GET http://user@b.example/p HTTP/1.1\r\nHost: b.example\r\n\r\n", NULL, NULL, NULL},
    {"request: absolute-form authority no Host may hold is refused", 'Q',
     "GET http://a<b\"c/p HTTP/1.1\r\nHost: a\r\n\r\n", NULL, NULL, NULL},
    {"request: absolute-form with an empty authority keeps Host", 'Q',
     "GET http:///p HTTP/1.1\r\nHost: a\r\n\r\n", NULL, NULL,
     "GET /p HTTP/1.1\r\nHost: a\r\n\r\n"},
    {"request: absolute-form IPv6 authority", 'Q',
     "GET http://[::1]:8080 HTTP/1.1\r\nHost: a\r\n\r\n", NULL, NULL,
     "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"},
    {"request: absolute-form without a path", 'Q',
     "GET http://b.example?q HTTP/1.1\r\nHost: b.example\r\n\r\n", NULL, NULL,
     "GET /?q HTTP/1.1\r\nHost: b.example\r\n\r\n"},
    {"request: absolute-form, HTTP/1.0 without Host: Host added first", 'Q',
     "GET http://c.example/x HTTP/1.0\r\nX: 1\r\n\r\n", &k_prefix, &k_v10,
     "GET /v2 HTTP/1.0\r\nHost: c.example\r\nX: 1\r\n\r\n"},
    {"request: HTTP/1.0 without Host gets default_host, sent as 1.1", 'Q',
     "GET / HTTP/1.0\r\nX: 1\r\n\r\n", NULL, &k_default_host,
     "GET / HTTP/1.1\r\nHost: 10.1.2.3:8080\r\nX: 1\r\n\r\n"},
    {"request: default_host is not used when Host is there", 'Q',
     "GET / HTTP/1.0\r\nHost: h\r\n\r\n", NULL, &k_default_host,
     "GET / HTTP/1.1\r\nHost: h\r\n\r\n"},
    {"request: HTTP/1.0 keep-alive kept as 1.0", 'Q',
     "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", NULL, &k_keep_alive_10,
     "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"},
    {"request: CONNECT and OPTIONS * targets are never rewritten", 'Q',
     "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", &k_whole, NULL,
     "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n"},
    {"request: OPTIONS *", 'Q', "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", &k_whole, NULL,
     "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n"},
    /* ---- requests: broken contexts ---- */
    {"request: peer with a comma is refused", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_bad_peer, NULL},
    {"request: proto that is not a token", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_bad_proto, NULL},
    {"request: version 1.2", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL, &k_bad_version,
     NULL},
    {"request: unknown connection", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_bad_connection, NULL},
    {"request: unknown flag", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL, &k_bad_flags,
     NULL},
    {"request: default_host with a space", 'Q', "GET / HTTP/1.0\r\n\r\n", NULL, &k_bad_host,
     NULL},
    {"request: extra that is an empty line", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_extra_empty_line, NULL},
    {"request: extra without CRLF", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_extra_no_crlf, NULL},
    {"request: extra with a bare LF", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_extra_bare_lf, NULL},
    {"request: extra with obs-fold", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_extra_fold, NULL},
    {"request: extra carrying a second request", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n", NULL,
     &k_extra_second_head, NULL},
    {"request: extra with space before the colon", 'Q', "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
     NULL, &k_extra_space_colon, NULL},

    /* ---- responses ---- */
    {"response: unchanged", 'R', "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\nhi",
     NULL, NULL, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-A: 1\r\n\r\n"},
    {"response: missing reason gets its SP", 'R', "HTTP/1.1 204\r\n\r\n", NULL, NULL,
     "HTTP/1.1 204 \r\n\r\n"},
    {"response: HTTP/1.0 answered as 1.1 with Connection: close", 'R',
     "HTTP/1.0 200 Fine Thanks\r\nServer: old\r\n\r\n", NULL, &k_close,
     "HTTP/1.1 200 Fine Thanks\r\nServer: old\r\nConnection: close\r\n\r\n"},
    {"response: hop-by-hop dropped, ops applied, request-only context ignored", 'R',
     "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n"
     "X-Internal: i\r\nX-Env: dev\r\nSet-Cookie: a=1\r\nX-Secret: s\r\nHost: h\r\n"
     "X-Forwarded-For: 1.1.1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
     &k_ops, &k_proxy,
     "HTTP/1.1 200 OK\r\nX-Env: prod\r\nSet-Cookie: a=1\r\nHost: h\r\n"
     "X-Forwarded-For: 1.1.1.1\r\nTransfer-Encoding: chunked\r\nx-new: n\r\nX-Added: a1\r\n"
     "x-added: a2\r\n\r\n"},
    {"response: 101 keeps Upgrade when upgrading", 'R',
     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     "Sec-WebSocket-Accept: s3pP\r\n\r\n",
     NULL, &k_upgrade,
     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pP\r\n"
     "Connection: upgrade\r\n\r\n"},
    {"response: re-framed: Transfer-Encoding dropped", 'R',
     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", NULL, &k_reframe,
     "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Reframed: 1\r\n\r\n"},
    {"response: status 599 with obs-text reason", 'R', "HTTP/1.1 599 \xe9t\xe9\r\n\r\n", NULL,
     NULL, "HTTP/1.1 599 \xe9t\xe9\r\n\r\n"},
    {"response: broken extra", 'R', "HTTP/1.1 200 OK\r\n\r\n", NULL, &k_extra_second_head, NULL},
};

/* Parses in (placed at the guard) as a request or a response. */
static int parse_head(char kind, const char *in, size_t len, http1_parser *p, http1_header *h,
                      http1_framing *f)
{
    int rc;

    http1_parser_init(p, h, 128, NULL);
    if (kind == 'Q') {
        rc = http1_parse_request(p, in, len);
        if (rc <= 0)
            return rc == 0 ? -1 : rc;
        return http1_request_framing(in, p->method, p->minor_version, p->headers,
                                     p->num_headers, f) < 0 ? -3 : rc;
    }
    rc = http1_parse_response(p, in, len);
    if (rc <= 0)
        return rc == 0 ? -1 : rc;
    return http1_response_framing(in, p->status, p->minor_version, 0, 0, p->headers,
                                  p->num_headers, f) < 0 ? -3 : rc;
}

static int64_t call(const rw_case *c, const char *in, const http1_parser *p,
                    const http1_framing *f, char *out, size_t cap)
{
    if (c->kind == 'Q')
        return rw_request(in, p, f, c->ops, c->ctx, out, cap);
    return rw_response(in, p, f, c->ops, c->ctx, out, cap);
}

static int run_case(const rw_case *c)
{
    http1_parser p, p2;
    http1_header h[128], h2[128];
    http1_framing f;
    size_t len = strlen(c->in), want_len, cap;
    char *in = tk_guard_at(&g_in, len);
    char *out;
    int64_t r;
    int rc;

    memcpy(in, c->in, len);
    rc = parse_head(c->kind, in, len, &p, h, &f);
    CHECK(rc > 0);
    if (c->ops)
        CHECK(rw_ops_check(c->ops) == NULL);

    if (!c->want) {
        CHECK_EQ(call(c, in, &p, &f, NULL, 0), 0);
        CHECK_EQ(call(c, in, &p, &f, tk_guard_at(&g_out, 4096), 4096), 0);
        return 0;
    }
    want_len = strlen(c->want);

    CHECK_EQ(call(c, in, &p, &f, NULL, 0), -(int64_t)want_len);
    for (cap = 0; cap < want_len; cap++) {
        out = tk_guard_at(&g_out, cap);
        r = call(c, in, &p, &f, out, cap);
        if (r != -(int64_t)want_len) {
            fprintf(stderr, "  cap %zu:\n", cap);
            CHECK_EQ(r, -(int64_t)want_len);
        }
    }

    out = tk_guard_at(&g_out, want_len);
    r = call(c, in, &p, &f, out, want_len);
    if (r != (int64_t)want_len || memcmp(out, c->want, want_len) != 0) {
        show("want", c->want, want_len);
        if (r > 0)
            show("got ", out, (size_t)r);
        CHECK_EQ(r, (int64_t)want_len);
        CHECK(memcmp(out, c->want, want_len) == 0);
    }

    /* room to spare: nothing written after the result */
    out = tk_guard_at(&g_out, want_len + 64);
    memset(out, 0x5a, want_len + 64);
    CHECK_EQ(call(c, in, &p, &f, out, want_len + 64), (int64_t)want_len);
    for (cap = want_len; cap < want_len + 64; cap++)
        CHECK_EQ((unsigned char)out[cap], 0x5a);

    /* the output is one valid head, all of it */
    out = tk_guard_at(&g_out, want_len);
    memcpy(out, c->want, want_len);
    http1_parser_init(&p2, h2, 128, NULL);
    rc = c->kind == 'Q' ? http1_parse_request(&p2, out, want_len)
                        : http1_parse_response(&p2, out, want_len);
    CHECK_EQ(rc, (int)want_len);
    return 0;
}

/* ---- other cases --------------------------------------------------------- */

static int test_uuid4(void)
{
    static const uint8_t ff[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t zero[16];
    char *out = tk_guard_at(&g_out, RW_UUID_LEN);

    rw_uuid4(k_rid, out);
    CHECK(memcmp(out, RID, RW_UUID_LEN) == 0);
    rw_uuid4(ff, out);
    CHECK(memcmp(out, "ffffffff-ffff-4fff-bfff-ffffffffffff", RW_UUID_LEN) == 0);
    rw_uuid4(zero, out);
    CHECK(memcmp(out, "00000000-0000-4000-8000-000000000000", RW_UUID_LEN) == 0);
    return 0;
}

static int test_ctx_init(void)
{
    rw_ctx c;

    memset(&c, 0x7f, sizeof(c));
    rw_ctx_init(&c);
    CHECK_EQ(c.version_minor, 1);
    CHECK_EQ(c.connection, RW_CONN_NONE);
    CHECK_EQ(c.flags, 0);
    CHECK(c.request_id == NULL);
    CHECK_EQ(c.peer.len + c.proto.len + c.default_host.len + c.extra.len, 0);
    return 0;
}

static int test_null_arguments(void)
{
    http1_parser p;
    http1_header h[8];
    http1_framing f;
    const char *in = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    char out[64];

    CHECK(parse_head('Q', in, strlen(in), &p, h, &f) > 0);
    CHECK_EQ(rw_request(NULL, &p, &f, NULL, NULL, out, sizeof(out)), 0);
    CHECK_EQ(rw_request(in, NULL, &f, NULL, NULL, out, sizeof(out)), 0);
    CHECK_EQ(rw_request(in, &p, NULL, NULL, NULL, out, sizeof(out)), 0);
    CHECK_EQ(rw_request(in, &p, &f, NULL, NULL, NULL, 5), 0);
    CHECK_EQ(rw_request(in, &p, &f, NULL, NULL, out, sizeof(out)), 27);
    /* a parser that holds a request, given to rw_response: status 0 */
    CHECK_EQ(rw_response(in, &p, &f, NULL, NULL, out, sizeof(out)), 0);
    return 0;
}

/* rw_ops_check: valid and invalid operation sets. */
typedef struct ops_case {
    const char *name;
    rw_ops ops;
    int valid;
} ops_case;

static const rw_field k_f_ok[] = {{STR("X-A"), STR("")}, {STR("x-b"), STR("v \t w \xff")}};
static const rw_field k_f_dup[] = {{STR("X-A"), STR("1")}, {STR("x-a"), STR("2")}};
static const rw_field k_f_space_name[] = {{STR("X A"), STR("1")}};
static const rw_field k_f_empty_name[] = {{STR(""), STR("1")}};
static const rw_field k_f_colon[] = {{STR("x:a"), STR("1")}};
static const rw_field k_f_crlf[] = {{STR("X-A"), STR("1\r\nX-Evil: 2")}};
static const rw_field k_f_nul[] = {{STR("X-A"), {"a\0b", 3}}};
static const rw_field k_f_lead[] = {{STR("X-A"), STR(" 1")}};
static const rw_field k_f_trail[] = {{STR("X-A"), STR("1\t")}};
static const rw_field k_f_cl[] = {{STR("Content-Length"), STR("0")}};
static const rw_field k_f_te[] = {{STR("transfer-encoding"), STR("chunked")}};
static const rw_field k_f_host[] = {{STR("HOST"), STR("x")}};
static const rw_field k_f_conn[] = {{STR("Connection"), STR("close")}};
static const rw_field k_f_upgrade[] = {{STR("Upgrade"), STR("h2c")}};
static const rw_str k_r_ok[] = {STR("x-a"), STR("X-FORWARDED-FOR")};
static const rw_str k_r_te[] = {STR("te")};
static const rw_str k_r_bad[] = {STR("x a")};
static rw_field k_f_many[RW_MAX_SET + 1];
static char k_many_names[RW_MAX_SET + 1][8];

static const ops_case k_ops_cases[] = {
    {"ops: empty", {0}, 1},
    {"ops: set/add/remove valid", {k_f_ok, 2, k_f_ok, 2, k_r_ok, 2}, 1},
    {"ops: path and authority valid",
     {.rewrite_path = 1, .path = STR("/a/b;c=1%20"), .rewrite_authority = 1,
      .authority = STR("[::1]:80")},
     1},
    {"ops: empty path replacement is valid", {.rewrite_path = 1, .path = STR("")}, 1},
    {"ops: path ignored without rewrite_path", {.path = STR("bad path")}, 1},
    {"ops: set twice (any case)", {k_f_dup, 2}, 0},
    {"ops: add twice is fine", {.add = k_f_dup, .nadd = 2}, 1},
    {"ops: space in a name", {k_f_space_name, 1}, 0},
    {"ops: empty name", {.add = k_f_empty_name, .nadd = 1}, 0},
    {"ops: colon in a name", {.add = k_f_colon, .nadd = 1}, 0},
    {"ops: CRLF in a value (header injection)", {.add = k_f_crlf, .nadd = 1}, 0},
    {"ops: NUL in a value", {k_f_nul, 1}, 0},
    {"ops: leading space in a value", {k_f_lead, 1}, 0},
    {"ops: trailing tab in a value", {.add = k_f_trail, .nadd = 1}, 0},
    {"ops: set Content-Length", {k_f_cl, 1}, 0},
    {"ops: add Transfer-Encoding", {.add = k_f_te, .nadd = 1}, 0},
    {"ops: set Host", {k_f_host, 1}, 0},
    {"ops: add Connection", {.add = k_f_conn, .nadd = 1}, 0},
    {"ops: set Upgrade", {k_f_upgrade, 1}, 0},
    {"ops: remove TE", {.remove = k_r_te, .nremove = 1}, 0},
    {"ops: remove a non-token", {.remove = k_r_bad, .nremove = 1}, 0},
    {"ops: count without array", {.nadd = 1}, 0},
    {"ops: path with a query", {.rewrite_path = 1, .path = STR("/a?b")}, 0},
    {"ops: path with a space", {.rewrite_path = 1, .path = STR("/a b")}, 0},
    {"ops: path with a fragment", {.rewrite_path = 1, .path = STR("/a#b")}, 0},
    {"ops: empty authority", {.rewrite_authority = 1, .authority = STR("")}, 0},
    {"ops: authority with a slash", {.rewrite_authority = 1, .authority = STR("a/b")}, 0},
    {"ops: authority with userinfo", {.rewrite_authority = 1, .authority = STR("u@a")}, 0},
};

static int test_ops_check(const ops_case *c)
{
    const char *why = rw_ops_check(&c->ops);

    if (c->valid && why)
        fprintf(stderr, "  rejected: %s\n", why);
    CHECK_EQ(why == NULL, c->valid);
    return 0;
}

static int test_too_many_sets(void)
{
    rw_ops ops;
    uint32_t i;

    for (i = 0; i <= RW_MAX_SET; i++) {
        snprintf(k_many_names[i], sizeof(k_many_names[i]), "x-%u", i);
        k_f_many[i].name.ptr = k_many_names[i];
        k_f_many[i].name.len = (uint32_t)strlen(k_many_names[i]);
        k_f_many[i].value.ptr = "v";
        k_f_many[i].value.len = 1;
    }
    memset(&ops, 0, sizeof(ops));
    ops.set = k_f_many;
    ops.nset = RW_MAX_SET;
    CHECK(rw_ops_check(&ops) == NULL);
    ops.nset = RW_MAX_SET + 1;
    CHECK(rw_ops_check(&ops) != NULL);
    return 0;
}

/* All RW_MAX_SET set operations are tracked: the last one replaces in place. */
static int test_max_sets_in_place(void)
{
    static char head[4096], want[8192];
    http1_parser p;
    http1_header h[128];
    http1_framing f;
    rw_ops ops;
    size_t n, wn;
    char *in, *out;
    int64_t r;

    memset(&ops, 0, sizeof(ops));
    ops.set = k_f_many;
    ops.nset = RW_MAX_SET;
    n = (size_t)snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: a\r\nX-%u: old\r\n"
                         "x-%u: old2\r\nZ: z\r\n\r\n", RW_MAX_SET - 1, RW_MAX_SET - 1);
    wn = (size_t)snprintf(want, sizeof(want), "GET / HTTP/1.1\r\nHost: a\r\nX-%u: v\r\nZ: z\r\n",
                          RW_MAX_SET - 1);
    for (uint32_t i = 0; i < RW_MAX_SET - 1; i++)
        wn += (size_t)snprintf(want + wn, sizeof(want) - wn, "x-%u: v\r\n", i);
    wn += (size_t)snprintf(want + wn, sizeof(want) - wn, "\r\n");
    in = tk_guard_at(&g_in, n);
    memcpy(in, head, n);
    CHECK(parse_head('Q', in, n, &p, h, &f) > 0);
    out = tk_guard_at(&g_out, wn);
    r = rw_request(in, &p, &f, &ops, NULL, out, wn);
    if (r != (int64_t)wn || memcmp(out, want, wn) != 0) {
        show("want", want, wn);
        if (r > 0)
            show("got ", out, (size_t)r);
    }
    CHECK_EQ(r, (int64_t)wn);
    CHECK(memcmp(out, want, wn) == 0);
    return 0;
}

/* The spans are offsets: the same parse rewrites the same from a moved buffer. */
static int test_offsets_not_pointers(void)
{
    const char *src = "GET http://x.example/a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n";
    const char *want = "GET /a HTTP/1.1\r\nHost: x.example\r\n"
                       "X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\nx-forwarded-proto: https\r\n"
                       "x-request-id: " RID "\r\n\r\n";
    size_t n = strlen(src), wn = strlen(want);
    char moved[256];
    http1_parser p;
    http1_header h[16];
    http1_framing f;
    char *in = tk_guard_at(&g_in, n), *out = tk_guard_at(&g_out, wn);

    memcpy(in, src, n);
    CHECK(parse_head('Q', in, n, &p, h, &f) > 0);
    memcpy(moved, src, n);
    memset(in, 'z', n);
    CHECK_EQ(rw_request(moved, &p, &f, NULL, &k_proxy, out, wn), (int64_t)wn);
    CHECK(memcmp(out, want, wn) == 0);
    return 0;
}

int main(void)
{
    size_t i;

    tk_guard_init(&g_in, 64u * 1024u);
    tk_guard_init(&g_out, 64u * 1024u);
    for (i = 0; i < sizeof(k_cases) / sizeof(k_cases[0]); i++)
        tk_report(NULL, k_cases[i].name, run_case(&k_cases[i]));
    for (i = 0; i < sizeof(k_ops_cases) / sizeof(k_ops_cases[0]); i++)
        tk_report(NULL, k_ops_cases[i].name, test_ops_check(&k_ops_cases[i]));
    tk_report(NULL, "ops: at most RW_MAX_SET set operations", test_too_many_sets());
    tk_report(NULL, "request: RW_MAX_SET set operations all tracked", test_max_sets_in_place());
    tk_report(NULL, "uuid4: version and variant bits, lower-case hex", test_uuid4());
    tk_report(NULL, "rw_ctx_init: defaults", test_ctx_init());
    tk_report(NULL, "null and mismatched arguments are refused", test_null_arguments());
    tk_report(NULL, "results are offsets, not pointers", test_offsets_not_pointers());
    return tk_finish();
}
