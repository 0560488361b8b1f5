/* http1.c - HTTP/1.1 head parser, chunked decoder and framing rules.
 *
 * Contracts are in http1.h. Notes on the implementation:
 *
 * - The head parser is a goto-threaded state machine. A call enters at the
 *   label of p->stage_ (one switch), then runs straight through the grammar;
 *   p->stage_ and p->pos_ are written only when it suspends, succeeds or
 *   fails. An element in progress keeps its start offset in the result field
 *   it is going to fill, so a resumed call needs no other memory.
 * - The scanners (scan_tchar, scan_value, scan_target) return how many
 *   leading bytes of a run belong to a byte class. With SSE4.2 they test 16
 *   bytes per PCMPESTRI against a list of byte ranges; the ranges may be a
 *   subset of the class (a byte outside them is then checked in the table
 *   and, if allowed, skipped), never a superset. A 16-byte load is only done
 *   when 16 bytes remain, so nothing at or past the end is read.
 * - Limits are applied by clipping the visible buffer: the head parser never
 *   looks past max_head_bytes, nor a request-line past max_line_bytes + 2.
 *   Suspending at a clipped end is an error. Whole or piecewise input hence
 *   sees exactly the same bytes in the same order, and gets the same result.
 */
#include "http1.h"

#include <string.h>

#if defined(__SSE4_2__) && !defined(HTTP1_NO_SIMD)
#define HTTP1_SSE42 1
#include <nmmintrin.h>
#endif

#if defined(__GNUC__)
#define LIKELY(x)   __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)
#else
#define LIKELY(x)   (x)
#define UNLIKELY(x) (x)
#endif

/* ---- byte classes (RFC 9110 §5.6.2, §5.5; RFC 3986 §3.2.2) ----------- */

/* tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *        "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static const uint8_t k_tchar[256] = {
    ['!'] = 1, ['#' ... '\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1,
    ['0' ... '9'] = 1, ['A' ... 'Z'] = 1, ['^' ... 'z'] = 1, ['|'] = 1, ['~'] = 1,
};

/* field-value and reason-phrase bytes: HTAB / SP / VCHAR / obs-text */
static const uint8_t k_value[256] = {
    ['\t'] = 1, [' ' ... '~'] = 1, [0x80 ... 0xff] = 1,
};

/* request-target bytes: VCHAR (the URI grammar has nothing else) */
static const uint8_t k_target[256] = {
    ['!' ... '~'] = 1,
};

/* qdtext (RFC 9110 §5.6.4): HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text */
static const uint8_t k_qdtext[256] = {
    ['\t'] = 1, [' '] = 1, ['!'] = 1, ['#' ... '['] = 1, [']' ... '~'] = 1, [0x80 ... 0xff] = 1,
};

/* bytes of a URI authority (host [":" port]): unreserved / pct-encoded /
 * sub-delims / ":" / "[" / "]" (IP-literal) */
static const uint8_t k_host[256] = {
    ['A' ... 'Z'] = 1, ['a' ... 'z'] = 1, ['0' ... '9'] = 1, ['-'] = 1, ['.'] = 1,
    ['_'] = 1, ['~'] = 1, ['%'] = 1, ['!'] = 1, ['$'] = 1, ['&'] = 1, ['\''] = 1,
    ['('] = 1, [')'] = 1, ['*'] = 1, ['+'] = 1, [','] = 1, [';'] = 1, ['='] = 1,
    [':'] = 1, ['['] = 1, [']'] = 1,
};

#ifdef HTTP1_SSE42
/* PCMPESTRI range lists (pairs lo,hi), each a subset of its table above.
 * tchar has 9 ranges and PCMPESTRI takes 8: '~' is left to the table. */
static const char k_tchar_ranges[16] __attribute__((aligned(16))) = {
    '!', '!', '#', '\'', '*', '+', '-', '.', '0', '9', 'A', 'Z', '^', 'z', '|', '|',
};
static const char k_value_ranges[16] __attribute__((aligned(16))) = {
    '\t', '\t', ' ', '~', (char)0x80, (char)0xff,
};
static const char k_target_ranges[16] __attribute__((aligned(16))) = {
    '!', '~',
};

#define SIDD_MODE (_SIDD_UBYTE_OPS | _SIDD_CMP_RANGES | _SIDD_NEGATIVE_POLARITY | \
                   _SIDD_LEAST_SIGNIFICANT)

/* Length of the leading run of s[0..n) whose bytes are in tab; the SSE part
 * handles whole 16-byte blocks, the scalar loop the rest. */
static inline size_t scan_run(const char *s, size_t n, const uint8_t *tab,
                              const char *ranges, int nranges)
{
    const __m128i r = _mm_load_si128((const __m128i *)ranges);
    size_t i = 0;

    while (n - i >= 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)(s + i));
        int k = _mm_cmpestri(r, nranges, b, 16, SIDD_MODE);
        if (LIKELY(k == 16)) {
            i += 16;
            continue;
        }
        i += (size_t)k;
        if (!tab[(uint8_t)s[i]])
            return i;
        i++; /* allowed, but outside the fast ranges */
    }
    while (i < n && tab[(uint8_t)s[i]])
        i++;
    return i;
}

#define scan_tchar(s, n)  scan_run((s), (n), k_tchar, k_tchar_ranges, 16)
#define scan_value(s, n)  scan_run((s), (n), k_value, k_value_ranges, 6)
#define scan_target(s, n) scan_run((s), (n), k_target, k_target_ranges, 2)

#else /* scalar */

/* Length of the leading run of s[0..n) whose bytes are in tab, four bytes
 * per iteration. */
static inline size_t scan_run(const char *s, size_t n, const uint8_t *tab)
{
    size_t i = 0;

    while (n - i >= 4) {
        if (UNLIKELY(!tab[(uint8_t)s[i]]))
            return i;
        if (UNLIKELY(!tab[(uint8_t)s[i + 1]]))
            return i + 1;
        if (UNLIKELY(!tab[(uint8_t)s[i + 2]]))
            return i + 2;
        if (UNLIKELY(!tab[(uint8_t)s[i + 3]]))
            return i + 3;
        i += 4;
    }
    while (i < n && tab[(uint8_t)s[i]])
        i++;
    return i;
}

#define scan_tchar(s, n)  scan_run((s), (n), k_tchar)
#define scan_value(s, n)  scan_run((s), (n), k_value)
#define scan_target(s, n) scan_run((s), (n), k_target)

#endif

const char *http1_simd(void)
{
#ifdef HTTP1_SSE42
    return "sse4.2";
#else
    return "scalar";
#endif
}

/* ---- small helpers ---------------------------------------------------- */

static inline int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static inline int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static inline int is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static inline char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

static int ieq(const char *s, size_t n, const char *lower, size_t lower_len)
{
    size_t i;

    if (n != lower_len)
        return 0;
    for (i = 0; i < n; i++)
        if (to_lower(s[i]) != lower[i])
            return 0;
    return 1;
}

int http1_span_ieq(const char *buf, http1_span s, const char *lower, size_t lower_len)
{
    return ieq(buf + s.off, s.len, lower, lower_len);
}

#define IEQ(s, n, lit) ieq((s), (n), lit, sizeof(lit) - 1)
#define SPAN_IS(buf, sp, lit) ((sp).len == sizeof(lit) - 1 && memcmp((buf) + (sp).off, lit, (sp).len) == 0)

static inline http1_span mkspan(size_t off, size_t len)
{
    http1_span s = {(uint32_t)off, (uint32_t)len};
    return s;
}

/* ---- limits and parser state ----------------------------------------- */

void http1_limits_init(http1_limits *l)
{
    l->max_head_bytes = HTTP1_DEFAULT_MAX_HEAD_BYTES;
    l->max_headers = HTTP1_DEFAULT_MAX_HEADERS;
    l->max_line_bytes = HTTP1_DEFAULT_MAX_LINE_BYTES;
}

static void limits_resolve(http1_limits *out, const http1_limits *in)
{
    http1_limits_init(out);
    if (in) {
        if (in->max_head_bytes)
            out->max_head_bytes = in->max_head_bytes;
        if (in->max_headers)
            out->max_headers = in->max_headers;
        if (in->max_line_bytes)
            out->max_line_bytes = in->max_line_bytes;
    }
    if (out->max_head_bytes > INT32_MAX)
        out->max_head_bytes = INT32_MAX; /* a head's length is returned as int */
}

enum {
    ST_START = 0, /* request: skipping empty lines; response: status-line */
    ST_METHOD,
    ST_TARGET,
    ST_VERSION,   /* request: "HTTP/1.x" CRLF, from its first byte */
    ST_REASON,
    ST_STATUS_LF, /* response: at the CR ending the status-line */
    ST_FIELD,     /* at the start of a field line or of the final CRLF */
    ST_NAME,
    ST_OWS,
    ST_VALUE,
    ST_DONE,
    ST_FAILED,
};

void http1_parser_reset(http1_parser *p)
{
    p->method = mkspan(0, 0);
    p->target = mkspan(0, 0);
    p->status = 0;
    p->reason = mkspan(0, 0);
    p->minor_version = -1;
    p->num_headers = 0;
    p->consumed = 0;
    p->err.status = 0;
    p->err.reason = NULL;
    p->pos_ = 0;
    p->stage_ = ST_START;
    p->is_response_ = 0;
}

void http1_parser_init(http1_parser *p, http1_header *headers, uint32_t headers_cap,
                       const http1_limits *limits)
{
    p->headers = headers;
    p->headers_cap = headers_cap;
    limits_resolve(&p->limits, limits);
    http1_parser_reset(p);
}

/* Matches s[0..avail) (avail <= 8) against "HTTP/" DIGIT "." DIGIT.
 * Returns 0 when all 8 bytes are there and the version is 1.0 or 1.1
 * (*minor set), 1 when the bytes so far fit the pattern but are fewer
 * than 8, -400 when they do not fit, -505 for a well-formed other version. */
static int match_version(const char *s, size_t avail, int *minor)
{
    static const char lit[5] = {'H', 'T', 'T', 'P', '/'};
    size_t i;

    for (i = 0; i < avail && i < 8; i++) {
        int ok;
        if (i < 5)
            ok = s[i] == lit[i];
        else if (i == 6)
            ok = s[i] == '.';
        else
            ok = is_digit(s[i]);
        if (!ok)
            return -400;
    }
    if (avail < 8)
        return 1;
    if (s[5] != '1' || (s[7] != '0' && s[7] != '1'))
        return -505;
    *minor = s[7] - '0';
    return 0;
}

/* Checks the request-target's form against the method (RFC 9112 §3.2).
 * Returns NULL if acceptable, else the reason. */
static const char *check_target(const char *buf, http1_span method, http1_span target)
{
    const char *t = buf + target.off;
    size_t n = target.len, i, colon;

    if (SPAN_IS(buf, method, "CONNECT")) {
        /* authority-form = uri-host ":" port; port 1*DIGIT here */
        for (colon = n; colon > 0 && is_digit(t[colon - 1]); colon--)
            ;
        if (colon == n || colon < 2 || t[colon - 1] != ':')
            return "CONNECT needs host:port";
        for (i = 0; i < colon - 1; i++)
            if (!k_host[(uint8_t)t[i]])
                return "CONNECT needs host:port";
        return NULL;
    }
    if (t[0] == '/')
        return NULL; /* origin-form */
    if (t[0] == '*') {
        if (n == 1 && SPAN_IS(buf, method, "OPTIONS"))
            return NULL;
        return "asterisk-form is for OPTIONS only";
    }
    /* absolute-form: scheme "://" ..., scheme = ALPHA *( ALPHA / DIGIT / "+" /
     * "-" / "." ). The URI of an HTTP request always has an authority
     * (RFC 9110 §4.2), so "urn:x" and "http:/x" are refused. */
    if (!is_alpha(t[0]))
        return "invalid request-target";
    for (i = 1; i < n; i++) {
        char c = t[i];
        if (c == ':')
            return (n - i >= 3 && t[i + 1] == '/' && t[i + 2] == '/') ? NULL
                                                                      : "invalid request-target";
        if (!is_alpha(c) && !is_digit(c) && c != '+' && c != '-' && c != '.')
            break;
    }
    return "invalid request-target";
}

static int parser_fail(http1_parser *p, int status, const char *reason)
{
    /* a response's fault is the upstream's: 502; a contract error stays 500 */
    p->err.status = (p->is_response_ && status != 500) ? 502 : status;
    p->err.reason = reason;
    p->stage_ = ST_FAILED;
    return HTTP1_ERROR;
}

/* Suspends (or fails at a limit) in the request/status line. */
#define SUSPEND_LINE(st) do { stage = (st); goto suspend_line; } while (0)
/* Suspends (or fails at a limit) in the field section. */
#define SUSPEND_HEAD(st) do { stage = (st); goto suspend_head; } while (0)
#define FAIL(status, reason) return parser_fail(p, (status), (reason))

static int parse_head(http1_parser *p, const char *buf, size_t len)
{
    const size_t max_head = p->limits.max_head_bytes;
    const size_t end = len < max_head ? len : max_head; /* clipped view */
    const uint32_t max_fields = p->headers_cap < p->limits.max_headers ? p->headers_cap
                                                                        : p->limits.max_headers;
    size_t pos = p->pos_;
    size_t line_lim = 0, lend = 0;
    /* kept in locals: stores through h would otherwise force reloads of p */
    http1_header *const hdrs = p->headers;
    uint32_t nh = p->num_headers;
    http1_header *h;
    int stage = p->stage_;
    char c;

    if (UNLIKELY(stage >= ST_DONE))
        return stage == ST_DONE ? (int)p->consumed : HTTP1_ERROR;
    if (UNLIKELY(len < pos))
        return parser_fail(p, 500, "buffer shorter than on the previous call");

    /* line_lim: where the start line must have ended (CRLF included). */
#define SET_LINE_END(start)                                                      \
    do {                                                                         \
        line_lim = (size_t)(start) + p->limits.max_line_bytes + 2;               \
        lend = end < line_lim ? end : line_lim;                                  \
    } while (0)

    switch (stage) {
    case ST_START:
        if (p->is_response_)
            goto status_line;
        goto request_start;
    case ST_METHOD:
        SET_LINE_END(p->method.off);
        goto method;
    case ST_TARGET:
        SET_LINE_END(p->method.off);
        goto target;
    case ST_VERSION:
        SET_LINE_END(p->method.off);
        goto version;
    case ST_REASON:
        SET_LINE_END(0);
        goto reason;
    case ST_STATUS_LF:
        SET_LINE_END(0);
        goto status_lf;
    case ST_FIELD:
        goto field;
    case ST_NAME:
        goto name;
    case ST_OWS:
        goto ows;
    case ST_VALUE:
        goto value;
    default:
        return parser_fail(p, 500, "corrupt parser state");
    }

    /* ---- request-line ---- */
request_start:
    /* RFC 9112 §2.2: ignore empty lines received before the request-line */
    for (;;) {
        if (pos >= end)
            SUSPEND_HEAD(ST_START);
        if (buf[pos] != '\r')
            break;
        if (pos + 1 >= end)
            SUSPEND_HEAD(ST_START);
        if (buf[pos + 1] != '\n')
            FAIL(400, "bare CR");
        pos += 2;
    }
    p->method.off = (uint32_t)pos;
    SET_LINE_END(pos);

method:
    pos += scan_tchar(buf + pos, lend - pos);
    if (UNLIKELY(pos >= lend))
        SUSPEND_LINE(ST_METHOD);
    if (UNLIKELY(buf[pos] != ' ' || pos == p->method.off))
        FAIL(400, "invalid method");
    p->method.len = (uint32_t)(pos - p->method.off);
    p->target.off = (uint32_t)++pos;

target:
    pos += scan_target(buf + pos, lend - pos);
    if (UNLIKELY(pos >= lend))
        SUSPEND_LINE(ST_TARGET);
    if (UNLIKELY(buf[pos] != ' ')) {
        if (buf[pos] == '\r' || buf[pos] == '\n')
            FAIL(400, "missing HTTP-version");
        FAIL(400, "invalid character in request-target");
    }
    if (UNLIKELY(pos == p->target.off))
        FAIL(400, "empty request-target");
    p->target.len = (uint32_t)(pos - p->target.off);
    {
        const char *why = check_target(buf, p->method, p->target);
        if (UNLIKELY(why != NULL))
            FAIL(400, why);
    }
    pos++;

version:
    {
        size_t avail = lend - pos;
        int minor = 0, r = match_version(buf + pos, avail < 8 ? avail : 8, &minor);
        if (UNLIKELY(r < 0))
            FAIL(-r, r == -505 ? "unsupported HTTP version" : "invalid HTTP-version");
        if (avail >= 9 && UNLIKELY(buf[pos + 8] != '\r'))
            FAIL(400, "expected CRLF after HTTP-version");
        if (avail < 10)
            SUSPEND_LINE(ST_VERSION);
        if (UNLIKELY(buf[pos + 9] != '\n'))
            FAIL(400, "bare CR");
        p->minor_version = minor;
        pos += 10;
    }
    goto field;

    /* ---- status-line ---- */
status_line:
    SET_LINE_END(0);
    {
        /* "HTTP/1.x" SP 3DIGIT (SP / CR): 13 bytes, re-read from 0 on resume */
        size_t avail = lend, i;
        int minor = 0, r = match_version(buf, avail < 8 ? avail : 8, &minor);
        if (r < 0)
            FAIL(502, r == -505 ? "unsupported HTTP version" : "invalid HTTP-version");
        if (avail > 8 && buf[8] != ' ')
            FAIL(502, "invalid status-line");
        for (i = 9; i < 12 && i < avail; i++)
            if (!is_digit(buf[i]))
                FAIL(502, "invalid status code");
        if (avail > 12 && buf[12] != ' ' && buf[12] != '\r')
            FAIL(502, "invalid status code");
        if (avail < 13)
            SUSPEND_LINE(ST_START);
        p->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
        if (p->status < 100)
            FAIL(502, "invalid status code");
        p->minor_version = minor;
        if (buf[12] == '\r') {
            p->reason = mkspan(12, 0); /* tolerated: no SP, no reason */
            pos = 12;
            goto status_lf;
        }
        p->reason.off = 13;
        pos = 13;
    }

reason:
    pos += scan_value(buf + pos, lend - pos);
    if (UNLIKELY(pos >= lend))
        SUSPEND_LINE(ST_REASON);
    if (UNLIKELY(buf[pos] != '\r'))
        FAIL(502, "invalid character in reason-phrase");
    p->reason.len = (uint32_t)(pos - p->reason.off);

status_lf: /* pos is at the CR */
    if (pos + 1 >= lend)
        SUSPEND_LINE(ST_STATUS_LF);
    if (UNLIKELY(buf[pos + 1] != '\n'))
        FAIL(502, "bare CR");
    pos += 2;

    /* ---- field lines ---- */
field:
    if (UNLIKELY(pos >= end))
        SUSPEND_HEAD(ST_FIELD);
    c = buf[pos];
    if (c == '\r') {
        if (pos + 1 >= end)
            SUSPEND_HEAD(ST_FIELD);
        if (UNLIKELY(buf[pos + 1] != '\n'))
            FAIL(400, "bare CR");
        pos += 2;
        p->num_headers = nh;
        p->consumed = (uint32_t)pos;
        p->pos_ = (uint32_t)pos;
        p->stage_ = ST_DONE;
        return (int)pos;
    }
    if (UNLIKELY(nh >= max_fields))
        FAIL(431, "too many header fields");
    if (UNLIKELY(is_ows(c)))
        FAIL(400, nh ? "obs-fold" : "whitespace before the first field");
    hdrs[nh].name.off = (uint32_t)pos;

name:
    h = &hdrs[nh];
    pos += scan_tchar(buf + pos, end - pos);
    if (UNLIKELY(pos >= end))
        SUSPEND_HEAD(ST_NAME);
    c = buf[pos];
    if (UNLIKELY(c != ':')) {
        if (is_ows(c))
            FAIL(400, "whitespace before colon");
        if (c == '\r' || c == '\n')
            FAIL(400, "field line without colon");
        FAIL(400, "invalid character in field name");
    }
    if (UNLIKELY(pos == h->name.off))
        FAIL(400, "empty field name");
    h->name.len = (uint32_t)(pos - h->name.off);
    pos++;

ows:
    while (pos < end && is_ows(buf[pos]))
        pos++;
    if (UNLIKELY(pos >= end))
        SUSPEND_HEAD(ST_OWS);
    hdrs[nh].value.off = (uint32_t)pos;

value:
    pos += scan_value(buf + pos, end - pos);
    if (UNLIKELY(pos >= end))
        SUSPEND_HEAD(ST_VALUE);
    c = buf[pos];
    if (LIKELY(c == '\r')) {
        size_t v_end = pos;
        if (pos + 1 >= end)
            SUSPEND_HEAD(ST_VALUE); /* resumes at this CR */
        if (UNLIKELY(buf[pos + 1] != '\n'))
            FAIL(400, "bare CR in field value");
        h = &hdrs[nh];
        while (v_end > h->value.off && is_ows(buf[v_end - 1]))
            v_end--;
        h->value.len = (uint32_t)(v_end - h->value.off);
        nh++;
        pos += 2;
        goto field;
    }
    if (c == '\n')
        FAIL(400, "bare LF in field value");
    if (c == '\0')
        FAIL(400, "NUL in field value");
    FAIL(400, "invalid character in field value");

suspend_line:
    /* the start line has not ended within lend */
    if (lend == line_lim || lend == max_head)
        FAIL(414, p->is_response_ ? "status-line too long" : "request-line too long");
    p->pos_ = (uint32_t)pos;
    p->stage_ = (uint8_t)stage;
    return HTTP1_INCOMPLETE;

suspend_head:
    if (end == max_head)
        FAIL(431, "header section too large");
    p->num_headers = nh;
    p->pos_ = (uint32_t)pos;
    p->stage_ = (uint8_t)stage;
    return HTTP1_INCOMPLETE;
#undef SET_LINE_END
}

int http1_parse_request(http1_parser *p, const char *buf, size_t len)
{
    return parse_head(p, buf, len);
}

int http1_parse_response(http1_parser *p, const char *buf, size_t len)
{
    p->is_response_ = 1;
    return parse_head(p, buf, len);
}

/* ---- chunked bodies --------------------------------------------------- */

enum {
    CK_SIZE0 = 0,      /* first HEXDIG of a chunk-size */
    CK_SIZE,           /* more HEXDIG, or what follows the size */
    CK_BWS_SEMI,       /* BWS seen: only more BWS or ";" may follow */
    CK_EXT_NAME0,      /* after ";": BWS, then the first tchar of a name */
    CK_EXT_NAME,       /* in an extension name */
    CK_EXT_NAME_BWS,   /* BWS after a name: "=" or ";" must follow */
    CK_EXT_VAL0,       /* after "=": BWS, then a token or a quoted-string */
    CK_EXT_TOKEN,      /* in a token value */
    CK_EXT_QUOTED,     /* in a quoted-string */
    CK_EXT_QPAIR,      /* after a backslash in a quoted-string */
    CK_EXT_AFTER_QUOTED,
    CK_SIZE_LF,        /* after the CR of the size line */
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER0,       /* at the start of a trailer line or the final CRLF */
    CK_TRAILER_NAME,
    CK_TRAILER_VALUE,
    CK_TRAILER_LF,
    CK_END_LF,
    CK_DONE,
    CK_FAILED,
};

void http1_chunked_init(http1_chunked *d, const http1_limits *limits)
{
    http1_limits l;

    limits_resolve(&l, limits);
    memset(d, 0, sizeof(*d));
    d->max_trailer_bytes = l.max_head_bytes;
    d->max_trailers = l.max_headers;
    d->stage_ = CK_SIZE0;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int64_t chunk_fail(http1_chunked *d, int status, const char *reason)
{
    d->err.status = status;
    d->err.reason = reason;
    d->stage_ = CK_FAILED;
    return HTTP1_ERROR;
}

int64_t http1_chunked_decode(http1_chunked *d, const char *buf, size_t len,
                             http1_span *spans, size_t spans_cap, size_t *nspans)
{
    size_t pos = 0;
    int stage = d->stage_;

    *nspans = 0;
    if (len > UINT32_MAX)
        len = UINT32_MAX;
    if (stage == CK_FAILED)
        return HTTP1_ERROR;

    while (pos < len && stage != CK_DONE) {
        char c;

        if (stage == CK_DATA) {
            size_t n = len - pos;
            if (*nspans >= spans_cap)
                break;
            if ((uint64_t)n > d->remaining)
                n = (size_t)d->remaining;
            spans[(*nspans)++] = mkspan(pos, n);
            pos += n;
            d->remaining -= n;
            d->body_bytes += n;
            if (d->remaining == 0)
                stage = CK_DATA_CR;
            continue;
        }

        c = buf[pos++];
        if (stage <= CK_SIZE_LF) {
            if (UNLIKELY(++d->line_bytes > HTTP1_MAX_CHUNK_LINE_BYTES))
                return chunk_fail(d, 400, "chunk-size line too long");
        } else if (stage >= CK_TRAILER0) {
            if (UNLIKELY(++d->trailer_bytes > d->max_trailer_bytes))
                return chunk_fail(d, 431, "trailer section too large");
        }

        switch (stage) {
        case CK_SIZE0:
        case CK_SIZE: {
            int v = hexval(c);
            if (v >= 0) {
                if (UNLIKELY(d->size >> 59))
                    return chunk_fail(d, 413, "chunk size too large");
                d->size = (d->size << 4) | (uint64_t)v;
                stage = CK_SIZE;
            } else if (stage == CK_SIZE0) {
                return chunk_fail(d, 400, "invalid chunk size");
            } else if (c == '\r') {
                stage = CK_SIZE_LF;
            } else if (c == ';') {
                stage = CK_EXT_NAME0;
            } else if (is_ows(c)) {
                stage = CK_BWS_SEMI;
            } else {
                return chunk_fail(d, 400, "invalid chunk size");
            }
            break;
        }
        case CK_BWS_SEMI:
            if (c == ';')
                stage = CK_EXT_NAME0;
            else if (!is_ows(c))
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_NAME0:
            if (k_tchar[(uint8_t)c])
                stage = CK_EXT_NAME;
            else if (!is_ows(c))
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_NAME:
            if (k_tchar[(uint8_t)c])
                break;
            if (c == '=')
                stage = CK_EXT_VAL0;
            else if (c == ';')
                stage = CK_EXT_NAME0;
            else if (c == '\r')
                stage = CK_SIZE_LF;
            else if (is_ows(c))
                stage = CK_EXT_NAME_BWS;
            else
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_NAME_BWS:
            if (c == '=')
                stage = CK_EXT_VAL0;
            else if (c == ';')
                stage = CK_EXT_NAME0;
            else if (!is_ows(c))
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_VAL0:
            if (k_tchar[(uint8_t)c])
                stage = CK_EXT_TOKEN;
            else if (c == '"')
                stage = CK_EXT_QUOTED;
            else if (!is_ows(c))
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_TOKEN:
            if (k_tchar[(uint8_t)c])
                break;
            if (c == ';')
                stage = CK_EXT_NAME0;
            else if (c == '\r')
                stage = CK_SIZE_LF;
            else if (is_ows(c))
                stage = CK_BWS_SEMI;
            else
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_QUOTED:
            if (c == '"')
                stage = CK_EXT_AFTER_QUOTED;
            else if (c == '\\')
                stage = CK_EXT_QPAIR;
            else if (!k_qdtext[(uint8_t)c])
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_EXT_QPAIR: /* quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text ) */
            if (!k_value[(uint8_t)c])
                return chunk_fail(d, 400, "invalid chunk extension");
            stage = CK_EXT_QUOTED;
            break;
        case CK_EXT_AFTER_QUOTED:
            if (c == ';')
                stage = CK_EXT_NAME0;
            else if (c == '\r')
                stage = CK_SIZE_LF;
            else if (is_ows(c))
                stage = CK_BWS_SEMI;
            else
                return chunk_fail(d, 400, "invalid chunk extension");
            break;
        case CK_SIZE_LF:
            if (c != '\n')
                return chunk_fail(d, 400, "bare CR in chunk-size line");
            d->line_bytes = 0;
            if (d->size == 0) {
                stage = CK_TRAILER0;
            } else {
                d->remaining = d->size;
                d->size = 0;
                stage = CK_DATA;
            }
            break;
        case CK_DATA_CR:
            if (c != '\r')
                return chunk_fail(d, 400, "missing CRLF after chunk data");
            stage = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (c != '\n')
                return chunk_fail(d, 400, "missing CRLF after chunk data");
            stage = CK_SIZE0;
            break;
        case CK_TRAILER0:
            if (c == '\r') {
                stage = CK_END_LF;
            } else if (k_tchar[(uint8_t)c]) {
                if (UNLIKELY(++d->num_trailers > d->max_trailers))
                    return chunk_fail(d, 431, "too many trailer fields");
                stage = CK_TRAILER_NAME;
            } else if (is_ows(c)) {
                return chunk_fail(d, 400, "obs-fold in trailer section");
            } else {
                return chunk_fail(d, 400, "invalid character in trailer field name");
            }
            break;
        case CK_TRAILER_NAME:
            if (c == ':')
                stage = CK_TRAILER_VALUE;
            else if (is_ows(c))
                return chunk_fail(d, 400, "whitespace before colon");
            else if (!k_tchar[(uint8_t)c])
                return chunk_fail(d, 400, "invalid character in trailer field name");
            break;
        case CK_TRAILER_VALUE:
            if (c == '\r')
                stage = CK_TRAILER_LF;
            else if (!k_value[(uint8_t)c])
                return chunk_fail(d, 400, "invalid character in trailer field value");
            break;
        case CK_TRAILER_LF:
            if (c != '\n')
                return chunk_fail(d, 400, "bare CR in trailer section");
            stage = CK_TRAILER0;
            break;
        case CK_END_LF:
            if (c != '\n')
                return chunk_fail(d, 400, "bare CR in trailer section");
            stage = CK_DONE;
            d->done = 1;
            break;
        default:
            return chunk_fail(d, 500, "corrupt decoder state");
        }
    }
    d->stage_ = (uint8_t)stage;
    return (int64_t)pos;
}

/* ---- framing ---------------------------------------------------------- */

/* Content-Length = 1*DIGIT. Returns 0 (value in *out), 400 or 413. */
static int parse_content_length(const char *s, size_t n, uint64_t *out)
{
    uint64_t v = 0;
    size_t i;

    if (n == 0)
        return 400;
    for (i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return 400;
    }
    for (i = 0; i < n; i++) {
        uint64_t dgt = (uint64_t)(s[i] - '0');
        if (v > (UINT64_C(0x7fffffffffffffff) - dgt) / 10)
            return 413;
        v = v * 10 + dgt;
    }
    *out = v;
    return 0;
}

/* Skips OWS in s[*i..n). */
static inline void skip_ows(const char *s, size_t n, size_t *i)
{
    while (*i < n && is_ows(s[*i]))
        (*i)++;
}

/* quoted-string at s[*i] (which is '"'); advances past the closing quote.
 * Returns 0, or -1 if malformed. */
static int skip_quoted(const char *s, size_t n, size_t *i)
{
    size_t j = *i + 1;

    while (j < n) {
        uint8_t c = (uint8_t)s[j];
        if (c == '"') {
            *i = j + 1;
            return 0;
        }
        if (c == '\\') {
            if (j + 1 >= n || !k_value[(uint8_t)s[j + 1]])
                return -1;
            j += 2;
            continue;
        }
        if (!k_qdtext[c])
            return -1;
        j++;
    }
    return -1;
}

struct te_state {
    int ncodings;
    int nchunked;
    int last_chunked;
    int unknown;
    int chunked_params;
};

/* Walks one Transfer-Encoding value:
 *   #( token *( OWS ";" OWS token BWS "=" BWS ( token / quoted-string ) ) )
 * Returns 0 or -1 (syntax). */
static int te_walk(const char *s, size_t n, struct te_state *st)
{
    size_t i = 0;

    for (;;) {
        size_t tok, tlen;
        int params = 0;

        /* empty list elements are allowed (RFC 9110 §5.6.1) */
        skip_ows(s, n, &i);
        if (i >= n)
            return 0;
        if (s[i] == ',') {
            i++;
            continue;
        }
        tok = i;
        while (i < n && k_tchar[(uint8_t)s[i]])
            i++;
        tlen = i - tok;
        if (tlen == 0)
            return -1;
        for (;;) {
            size_t j = i;
            skip_ows(s, n, &j);
            if (j >= n || s[j] != ';')
                break;
            j++;
            skip_ows(s, n, &j);
            if (j >= n || !k_tchar[(uint8_t)s[j]])
                return -1;
            while (j < n && k_tchar[(uint8_t)s[j]])
                j++;
            skip_ows(s, n, &j);
            if (j >= n || s[j] != '=')
                return -1;
            j++;
            skip_ows(s, n, &j);
            if (j < n && s[j] == '"') {
                if (skip_quoted(s, n, &j) < 0)
                    return -1;
            } else {
                size_t v0 = j;
                while (j < n && k_tchar[(uint8_t)s[j]])
                    j++;
                if (j == v0)
                    return -1;
            }
            i = j;
            params = 1;
        }
        skip_ows(s, n, &i);
        if (i < n && s[i] != ',')
            return -1;

        st->ncodings++;
        if (IEQ(s + tok, tlen, "chunked")) {
            st->nchunked++;
            st->last_chunked = 1;
            if (params)
                st->chunked_params = 1;
        } else {
            st->last_chunked = 0;
            if (!IEQ(s + tok, tlen, "gzip") && !IEQ(s + tok, tlen, "x-gzip") &&
                !IEQ(s + tok, tlen, "deflate") && !IEQ(s + tok, tlen, "compress") &&
                !IEQ(s + tok, tlen, "x-compress"))
                st->unknown = 1;
        }
    }
}

/* Walks one Connection value (#token), recording the options in f.
 * Returns 0, or the reason of the failure. */
static const char *connection_walk(const char *buf, http1_span v, http1_framing *f)
{
    const char *s = buf + v.off;
    size_t n = v.len, i = 0;

    for (;;) {
        size_t tok;

        skip_ows(s, n, &i);
        if (i >= n)
            return NULL;
        if (s[i] == ',') {
            i++;
            continue;
        }
        tok = i;
        while (i < n && k_tchar[(uint8_t)s[i]])
            i++;
        if (i == tok)
            return "invalid Connection";
        if (IEQ(s + tok, i - tok, "close"))
            f->conn_close = 1;
        else if (IEQ(s + tok, i - tok, "keep-alive"))
            f->conn_keep_alive = 1;
        else if (IEQ(s + tok, i - tok, "upgrade"))
            f->conn_upgrade = 1;
        if (f->num_conn_tokens >= HTTP1_MAX_CONN_TOKENS)
            return "too many Connection options";
        f->conn_tokens[f->num_conn_tokens++] = mkspan(v.off + tok, i - tok);
        skip_ows(s, n, &i);
        if (i < n && s[i] != ',')
            return "invalid Connection";
    }
}

static int framing_fail(http1_framing *f, int status, const char *reason)
{
    f->err.status = status;
    f->err.reason = reason;
    return HTTP1_ERROR;
}

/* What both directions share: CL, TE, Connection, Upgrade, Expect, Host.
 * Returns 0 or HTTP1_ERROR (with request statuses; the caller maps them). */
static int framing_common(const char *buf, int minor_version, int is_request,
                          const http1_header *headers, uint32_t n, http1_framing *f,
                          struct te_state *te)
{
    uint32_t i;
    int ncl = 0, nhost = 0;

    memset(f, 0, sizeof(*f));
    memset(te, 0, sizeof(*te));
    f->content_length_index = -1;
    f->transfer_encoding_index = -1;
    f->host_index = -1;
    f->upgrade_index = -1;

    for (i = 0; i < n; i++) {
        const char *nm = buf + headers[i].name.off;
        size_t nl = headers[i].name.len;
        const char *val = buf + headers[i].value.off;
        size_t vl = headers[i].value.len;

        /* dispatch on length first: most fields are none of these */
        switch (nl) {
        case 4:
            if (is_request && IEQ(nm, nl, "host")) {
                size_t k;
                if (++nhost > 1)
                    return framing_fail(f, 400, "more than one Host");
                for (k = 0; k < vl; k++)
                    if (!k_host[(uint8_t)val[k]])
                        return framing_fail(f, 400, "invalid Host");
                f->host_index = (int32_t)i;
            }
            break;
        case 6:
            if (is_request && IEQ(nm, nl, "expect")) {
                if (IEQ(val, vl, "100-continue"))
                    f->expect_continue = 1;
                else
                    f->expect_other = 1;
            }
            break;
        case 7:
            if (IEQ(nm, nl, "upgrade") && f->upgrade_index < 0)
                f->upgrade_index = (int32_t)i;
            break;
        case 10:
            if (IEQ(nm, nl, "connection")) {
                const char *why = connection_walk(buf, headers[i].value, f);
                if (why)
                    return framing_fail(f, 400, why);
            }
            break;
        case 14:
            if (IEQ(nm, nl, "content-length")) {
                int r;
                if (++ncl > 1)
                    return framing_fail(f, 400, "more than one Content-Length");
                r = parse_content_length(val, vl, &f->content_length);
                if (r)
                    return framing_fail(f, r, r == 413 ? "Content-Length too large"
                                                       : "invalid Content-Length");
                f->content_length_index = (int32_t)i;
            }
            break;
        case 17:
            if (IEQ(nm, nl, "transfer-encoding")) {
                if (te_walk(val, vl, te) < 0)
                    return framing_fail(f, 400, "invalid Transfer-Encoding");
                f->transfer_encoding_index = (int32_t)i;
            }
            break;
        default:
            break;
        }
    }

    if (f->transfer_encoding_index >= 0) {
        if (f->content_length_index >= 0)
            return framing_fail(f, 400, "both Content-Length and Transfer-Encoding");
        if (minor_version == 0)
            return framing_fail(f, 400, "Transfer-Encoding in HTTP/1.0");
        if (te->ncodings == 0)
            return framing_fail(f, 400, "empty Transfer-Encoding");
        if (te->nchunked > 1)
            return framing_fail(f, 400, "chunked applied more than once");
        if (te->chunked_params)
            return framing_fail(f, 400, "parameters on chunked");
    }
    if (is_request && nhost == 0 && minor_version == 1)
        return framing_fail(f, 400, "missing Host");
    if (minor_version == 1)
        f->keep_alive = !f->conn_close;
    else
        f->keep_alive = f->conn_keep_alive && !f->conn_close;
    if (minor_version == 0) {
        f->expect_continue = 0; /* RFC 9110 §10.1.1 */
        f->expect_other = 0;
    }
    return 0;
}

int http1_request_framing(const char *buf, http1_span method, int minor_version,
                          const http1_header *headers, uint32_t n, http1_framing *f)
{
    struct te_state te;

    if (framing_common(buf, minor_version, 1, headers, n, f, &te) < 0)
        return HTTP1_ERROR;
    f->upgrade = minor_version == 1 && f->conn_upgrade && f->upgrade_index >= 0;

    if (SPAN_IS(buf, method, "CONNECT")) {
        if (f->transfer_encoding_index >= 0 ||
            (f->content_length_index >= 0 && f->content_length != 0))
            return framing_fail(f, 400, "CONNECT with a body");
        f->body = HTTP1_BODY_TUNNEL;
        return 0;
    }
    if (f->transfer_encoding_index >= 0) {
        /* RFC 9112 §6.3 (4): chunked not final in a request -> 400 */
        if (!te.last_chunked)
            return framing_fail(f, 400, "Transfer-Encoding must end with chunked");
        /* RFC 9112 §6.1: a coding we do not understand -> 501 */
        if (te.unknown)
            return framing_fail(f, 501, "unknown transfer coding");
        f->body = HTTP1_BODY_CHUNKED;
    } else if (f->content_length_index >= 0 && f->content_length > 0) {
        f->body = HTTP1_BODY_LENGTH;
    } else {
        f->body = HTTP1_BODY_NONE;
    }
    return 0;
}

int http1_response_framing(const char *buf, int status, int minor_version, int req_head,
                           int req_connect, const http1_header *headers, uint32_t n,
                           http1_framing *f)
{
    struct te_state te;

    if (framing_common(buf, minor_version, 0, headers, n, f, &te) < 0) {
        f->err.status = 502;
        return HTTP1_ERROR;
    }
    if (status == 101) {
        f->upgrade = 1;
        f->body = HTTP1_BODY_TUNNEL;
    } else if (req_head || (status >= 100 && status < 200) || status == 204 || status == 304) {
        f->body = HTTP1_BODY_NONE;
    } else if (req_connect && status >= 200 && status < 300) {
        f->body = HTTP1_BODY_TUNNEL;
    } else if (f->transfer_encoding_index >= 0) {
        f->body = te.last_chunked ? HTTP1_BODY_CHUNKED : HTTP1_BODY_UNTIL_CLOSE;
    } else if (f->content_length_index >= 0) {
        f->body = f->content_length > 0 ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
    } else {
        f->body = HTTP1_BODY_UNTIL_CLOSE;
    }
    if (f->body == HTTP1_BODY_UNTIL_CLOSE || f->body == HTTP1_BODY_TUNNEL)
        f->keep_alive = 0;
    return 0;
}
