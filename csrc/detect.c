/* detect.c - which protocol a connection speaks, from its first bytes.
 *
 * Contract in detect.h; the rules are stated in fastproxy/proto/detect.py,
 * and this file follows that code step for step (a differential test,
 * tests/unit/test_detect_native.py, keeps the two equal). Notes:
 *
 * - Nothing at or past index FP_DETECT_MAX_BYTES is ever looked at: at most
 *   2 * DET_MAX_EMPTY_LINES bytes of empty lines, a method of at most
 *   DET_MAX_METHOD_LEN bytes, SP, a scheme of at most DET_MAX_SCHEME_LEN
 *   bytes and "://" (the #if below checks the sum); a TLS record header is
 *   6 bytes. So len is clipped to FP_DETECT_MAX_BYTES first, and every read
 *   below is checked against the clipped len.
 * - The method table is walked linearly (lengths first, then memcmp). It
 *   runs once per connection, on at most 42 short entries.
 */
#include "detect.h"

#include <string.h>

#define DET_MAX_EMPTY_LINES 2   /* detect.py MAX_EMPTY_LINES */
#define DET_MAX_SCHEME_LEN  16  /* detect.py MAX_SCHEME_LEN */
#define DET_MAX_METHOD_LEN  16  /* len("BASELINE-CONTROL") */
#define DET_RECORD_MAX      (1 << 14)  /* TLSPlaintext.length limit */

#define DET_PREFACE_LEN     24  /* the HTTP/2 connection preface: */
#define DET_PREFACE         "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

static const char k_preface[] = DET_PREFACE;
/* compile-time check: DET_PREFACE_LEN is the preface's length */
typedef char det_preface_len_ok[sizeof(DET_PREFACE) == DET_PREFACE_LEN + 1 ? 1 : -1];

#if DET_PREFACE_LEN > FP_DETECT_MAX_BYTES || \
    2 * DET_MAX_EMPTY_LINES + DET_MAX_METHOD_LEN + 1 + DET_MAX_SCHEME_LEN + 3 > FP_DETECT_MAX_BYTES
#error "FP_DETECT_MAX_BYTES is below what the rules may look at"
#endif

/* detect.py METHODS (case-sensitive), with their lengths. */
struct det_method {
    unsigned char len;
    char name[DET_MAX_METHOD_LEN + 1];
};

#define M(s) { sizeof(s) - 1, s }
static const struct det_method k_methods[] = {
    M("GET"), M("HEAD"), M("POST"), M("PUT"), M("DELETE"), M("CONNECT"),
    M("OPTIONS"), M("TRACE"), M("PATCH"),
    M("PROPFIND"), M("PROPPATCH"), M("MKCOL"), M("COPY"), M("MOVE"), M("LOCK"),
    M("UNLOCK"), M("VERSION-CONTROL"), M("REPORT"), M("CHECKOUT"), M("CHECKIN"),
    M("UNCHECKOUT"), M("MKWORKSPACE"), M("UPDATE"), M("LABEL"), M("MERGE"),
    M("BASELINE-CONTROL"), M("MKACTIVITY"), M("ORDERPATCH"), M("ACL"),
    M("MKCALENDAR"), M("SEARCH"), M("BIND"), M("UNBIND"), M("REBIND"), M("LINK"),
    M("UNLINK"), M("PURGE"), M("M-SEARCH"), M("NOTIFY"), M("SUBSCRIBE"),
    M("UNSUBSCRIBE"), M("QUERY"),
};
#undef M
#define DET_N_METHODS (sizeof(k_methods) / sizeof(k_methods[0]))

static inline int is_alpha(unsigned char c)
{
    return (unsigned char)((c | 0x20) - 'a') < 26;
}

static inline int is_digit(unsigned char c)
{
    return (unsigned char)(c - '0') < 10;
}

/* scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )  (RFC 3986 §3.1) */
static inline int is_scheme_char(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '+' || c == '-' || c == '.';
}

/* The first byte of a CONNECT authority: a reg-name/IPv4 start or '['. */
static inline int is_authority_start(unsigned char c)
{
    return is_alpha(c) || is_digit(c) || c == '[';
}

/* 1 when s[0..n) is exactly a known method. */
static int is_method(const unsigned char *s, size_t n)
{
    for (size_t j = 0; j < DET_N_METHODS; j++)
        if (k_methods[j].len == n && memcmp(k_methods[j].name, s, n) == 0)
            return 1;
    return 0;
}

/* 1 when s[0..n), 1 <= n, is the start (or all) of a known method. */
static int is_method_prefix(const unsigned char *s, size_t n)
{
    for (size_t j = 0; j < DET_N_METHODS; j++)
        if (k_methods[j].len >= n && memcmp(k_methods[j].name, s, n) == 0)
            return 1;
    return 0;
}

/* b[0] is 0x16: a TLS handshake record header carrying a ClientHello. */
static int detect_tls(const unsigned char *b, size_t n)
{
    if (n < 2)
        return FP_DETECT_NEED_MORE;
    if (b[1] != 3)
        return FP_DETECT_OPAQUE;
    if (n < 3)
        return FP_DETECT_NEED_MORE;
    if (b[2] > 4)
        return FP_DETECT_OPAQUE;
    if (n < 5)
        return FP_DETECT_NEED_MORE;
    unsigned length = ((unsigned)b[3] << 8) | b[4];
    if (length < 1 || length > DET_RECORD_MAX)
        return FP_DETECT_OPAQUE;
    if (n < 6)
        return FP_DETECT_NEED_MORE;
    return b[5] == 1 ? FP_DETECT_TLS : FP_DETECT_OPAQUE;
}

/* An HTTP/1 request start; 1 <= n <= FP_DETECT_MAX_BYTES. */
static int detect_http1(const unsigned char *b, size_t n)
{
    size_t i = 0;
    while (b[i] == '\r') {  /* empty lines */
        if (i >= 2 * DET_MAX_EMPTY_LINES)
            return FP_DETECT_OPAQUE;
        if (i + 1 >= n)
            return FP_DETECT_NEED_MORE;
        if (b[i + 1] != '\n')
            return FP_DETECT_OPAQUE;
        i += 2;
        if (i >= n)
            return FP_DETECT_NEED_MORE;
    }

    /* the method: up to DET_MAX_METHOD_LEN bytes, then SP */
    size_t end = i + DET_MAX_METHOD_LEN + 1;
    if (end > n)
        end = n;
    size_t sp = i;
    while (sp < end && b[sp] != ' ')
        sp++;
    if (sp == end)  /* no SP yet: a method could still be coming */
        return (end - i <= DET_MAX_METHOD_LEN && is_method_prefix(b + i, end - i))
                   ? FP_DETECT_NEED_MORE : FP_DETECT_OPAQUE;
    size_t mlen = sp - i;
    if (!is_method(b + i, mlen))
        return FP_DETECT_OPAQUE;
    int is_options = mlen == 7 && memcmp(b + i, "OPTIONS", 7) == 0;
    int is_connect = mlen == 7 && memcmp(b + i, "CONNECT", 7) == 0;

    /* the request-target's first byte */
    size_t k = sp + 1;
    if (k >= n)
        return FP_DETECT_NEED_MORE;
    unsigned char c = b[k];
    if (c == '/')  /* origin-form */
        return FP_DETECT_HTTP1;
    if (c == '*')  /* asterisk-form */
        return is_options ? FP_DETECT_HTTP1 : FP_DETECT_OPAQUE;
    if (is_connect)  /* authority-form */
        return is_authority_start(c) ? FP_DETECT_HTTP1 : FP_DETECT_OPAQUE;
    if (!is_alpha(c))
        return FP_DETECT_OPAQUE;

    /* absolute-form: scheme "://" */
    size_t m = k + 1;
    while (m < n && m - k < DET_MAX_SCHEME_LEN && is_scheme_char(b[m]))
        m++;
    if (m >= n)
        return FP_DETECT_NEED_MORE;
    static const char sep[3] = { ':', '/', '/' };
    size_t have = n - m < 3 ? n - m : 3;
    if (memcmp(b + m, sep, have) != 0)
        return FP_DETECT_OPAQUE;
    return have == 3 ? FP_DETECT_HTTP1 : FP_DETECT_NEED_MORE;
}

int fp_detect(const char *buf, size_t len)
{
    const unsigned char *b = (const unsigned char *)buf;
    if (len == 0)
        return FP_DETECT_NEED_MORE;
    if (b[0] == 0x16)
        return detect_tls(b, len);
    if (len > FP_DETECT_MAX_BYTES)
        len = FP_DETECT_MAX_BYTES;  /* nothing past it is looked at */
    if (b[0] == 'P') {  /* the HTTP/2 preface, or POST, PUT, PATCH... */
        size_t k = len < DET_PREFACE_LEN ? len : DET_PREFACE_LEN;
        if (memcmp(b, k_preface, k) == 0)
            return k == DET_PREFACE_LEN ? FP_DETECT_HTTP2 : FP_DETECT_NEED_MORE;
    }
    return detect_http1(b, len);
}
