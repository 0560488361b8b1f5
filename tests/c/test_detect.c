/* test_detect.c - csrc/detect.c under ASan/UBSan, with guard pages.
 *
 * A table of cases. Each case is an input, the answer for the whole input
 * and `at`, the length at which fp_detect() decides: every prefix shorter
 * than `at` must be FP_DETECT_NEED_MORE and every prefix from `at` on must be
 * the answer (a decision, once made, never changes as bytes arrive). Every
 * prefix is copied so that it ENDS at the first byte of a PROT_NONE page:
 * reading one byte past the length crashes.
 *
 * Then a property run over mutated inputs (a fixed-seed PRNG): the same
 * monotonicity, and no FP_DETECT_NEED_MORE from FP_DETECT_MAX_BYTES on. The
 * rules themselves are checked against fastproxy/proto/detect.py by
 * tests/unit/test_detect_native.py.
 *
 * Build alone:
 *   gcc -std=gnu99 -g -O1 -Wall -Wextra -Werror -Wno-unused-parameter \
 *       -fsanitize=address,undefined -Icsrc -o build/ctest/test_detect \
 *       tests/c/test_detect.c csrc/detect.c -lrt
 */
#include "testkit.h"

#include <signal.h>
#include <sys/wait.h>

#include "detect.h"

/* ---- harness ----------------------------------------------------------- */

/* The guard arena: one page of usable bytes, then one PROT_NONE page. */
static tk_guard g_arena;

static const char *place(const char *src, size_t n)
{
    return tk_guard_place(&g_arena, src, n);
}

static const char *result_name(int r)
{
    switch (r) {
    case FP_DETECT_NEED_MORE: return "NEED_MORE";
    case FP_DETECT_HTTP1:     return "HTTP1";
    case FP_DETECT_HTTP2:     return "HTTP2";
    case FP_DETECT_TLS:       return "TLS";
    case FP_DETECT_OPAQUE:    return "OPAQUE";
    default:                  return "?";
    }
}

#define S(lit) lit, sizeof(lit) - 1

#define NEED   FP_DETECT_NEED_MORE
#define HTTP1  FP_DETECT_HTTP1
#define HTTP2  FP_DETECT_HTTP2
#define TLS    FP_DETECT_TLS
#define OPAQUE FP_DETECT_OPAQUE

#define PREFACE "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

/* ---- the table ----------------------------------------------------------- */

typedef struct detect_case {
    const char *name;
    const char *in;
    size_t len;
    int want;     /* the answer from `at` bytes on */
    size_t at;    /* shorter prefixes are NEED_MORE */
} detect_case;

static const detect_case k_cases[] = {
    /* HTTP/2 */
    {"h2: the preface", S(PREFACE), HTTP2, 24},
    {"h2: the preface, then a SETTINGS frame", S(PREFACE "\0\0\0\4\0\0\0\0\0"), HTTP2, 24},
    {"h2: preface wrong in its last byte", S("PRI * HTTP/2.0\r\n\r\nSM\r\n\rX"), OPAQUE, 24},
    {"h2: PRI with HTTP/1.1 is no method", S("PRI * HTTP/1.1\r\n\r\n"), OPAQUE, 12},
    {"h2: preface after an empty line", S("\r\n" PREFACE), OPAQUE, 5},

    /* TLS */
    {"tls: TLS 1.0 record, ClientHello", S("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"), TLS, 6},
    {"tls: record version 3.4", S("\x16\x03\x04\x00\x01\x01"), TLS, 6},
    {"tls: record version 3.0", S("\x16\x03\x00\x00\x30\x01"), TLS, 6},
    {"tls: record version 3.5", S("\x16\x03\x05\x00\x30\x01"), OPAQUE, 3},
    {"tls: record version 2.x", S("\x16\x02\x01\x00\x30\x01"), OPAQUE, 2},
    {"tls: record length 0", S("\x16\x03\x01\x00\x00\x01"), OPAQUE, 5},
    {"tls: record length 1", S("\x16\x03\x01\x00\x01\x01"), TLS, 6},
    {"tls: record length 2^14", S("\x16\x03\x03\x40\x00\x01"), TLS, 6},
    {"tls: record length 2^14 + 1", S("\x16\x03\x03\x40\x01\x01"), OPAQUE, 5},
    {"tls: record length 0xffff", S("\x16\x03\x03\xff\xff\x01"), OPAQUE, 5},
    {"tls: ServerHello is not a client's", S("\x16\x03\x03\x00\x30\x02"), OPAQUE, 6},
    {"tls: handshake type 0", S("\x16\x03\x03\x00\x30\x00"), OPAQUE, 6},
    {"tls: alert record", S("\x15\x03\x03\x00\x02\x02\x28"), OPAQUE, 1},
    {"tls: SSLv2-compatible hello", S("\x80\x2e\x01\x03\x01\x00\x15"), OPAQUE, 1},

    /* HTTP/1: origin-form */
    {"h1: GET /", S("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), HTTP1, 5},
    {"h1: PUT / (P is no preface)", S("PUT /x HTTP/1.1\r\n"), HTTP1, 5},
    {"h1: POST /", S("POST /upload HTTP/1.1\r\n"), HTTP1, 6},
    {"h1: PATCH /", S("PATCH /a HTTP/1.1\r\n"), HTTP1, 7},
    {"h1: QUERY /", S("QUERY /q HTTP/1.1\r\n"), HTTP1, 7},
    {"h1: PROPPATCH /", S("PROPPATCH /d HTTP/1.1\r\n"), HTTP1, 11},
    {"h1: BASELINE-CONTROL / (longest method)", S("BASELINE-CONTROL / HTTP/1.1\r\n"), HTTP1, 18},
    {"h1: M-SEARCH /", S("M-SEARCH / HTTP/1.1\r\n"), HTTP1, 10},
    {"h1: one empty line first", S("\r\nGET / HTTP/1.1\r\n"), HTTP1, 7},
    {"h1: two empty lines first", S("\r\n\r\nHEAD / HTTP/1.1\r\n"), HTTP1, 10},
    {"h1: three empty lines first", S("\r\n\r\n\r\nGET / HTTP/1.1\r\n"), OPAQUE, 5},
    {"h1: CR CR", S("\r\rGET / HTTP/1.1\r\n"), OPAQUE, 2},
    {"h1: bare LF", S("\nGET / HTTP/1.1\r\n"), OPAQUE, 1},
    {"h1: CRLF then bare LF", S("\r\n\nGET / HTTP/1.1\r\n"), OPAQUE, 3},

    /* HTTP/1: methods */
    {"h1: lower-case method", S("get / HTTP/1.1\r\n"), OPAQUE, 1},
    {"h1: method with an extra letter", S("GETS / HTTP/1.1\r\n"), OPAQUE, 4},
    {"h1: a method's prefix, then SP", S("GE / HTTP/1.1\r\n"), OPAQUE, 3},
    {"h1: empty method", S(" / HTTP/1.1\r\n"), OPAQUE, 1},
    {"h1: NUL in the method", S("GE\0T / HTTP/1.1\r\n"), OPAQUE, 3},
    {"h1: 17 method bytes without SP", S("BASELINE-CONTROLS / HTTP/1.1\r\n"), OPAQUE, 17},
    {"h1: unknown token method", S("FOO / HTTP/1.1\r\n"), OPAQUE, 1},
    {"h1: HTAB after the method", S("GET\t/ HTTP/1.1\r\n"), OPAQUE, 4},

    /* HTTP/1: target forms */
    {"h1: OPTIONS *", S("OPTIONS * HTTP/1.1\r\n"), HTTP1, 9},
    {"h1: GET * is not asterisk-form", S("GET * HTTP/1.1\r\n"), OPAQUE, 5},
    {"h1: M-SEARCH * is not OPTIONS", S("M-SEARCH * HTTP/1.1\r\n"), OPAQUE, 10},
    {"h1: CONNECT host:port", S("CONNECT example.com:443 HTTP/1.1\r\n"), HTTP1, 9},
    {"h1: CONNECT IPv4", S("CONNECT 10.0.0.1:80 HTTP/1.1\r\n"), HTTP1, 9},
    {"h1: CONNECT [IPv6]", S("CONNECT [::1]:443 HTTP/1.1\r\n"), HTTP1, 9},
    {"h1: CONNECT origin-form", S("CONNECT /x HTTP/1.1\r\n"), HTTP1, 9},
    {"h1: CONNECT :port", S("CONNECT :443 HTTP/1.1\r\n"), OPAQUE, 9},
    {"h1: CONNECT *", S("CONNECT * HTTP/1.1\r\n"), OPAQUE, 9},
    {"h1: absolute-form http", S("GET http://example.com/ HTTP/1.1\r\n"), HTTP1, 11},
    {"h1: absolute-form https", S("POST https://a/ HTTP/1.1\r\n"), HTTP1, 13},
    {"h1: scheme with + - .", S("GET a+b-c.d://x HTTP/1.1\r\n"), HTTP1, 14},
    {"h1: one-letter scheme", S("GET a://x HTTP/1.1\r\n"), HTTP1, 8},
    {"h1: 16-byte scheme", S("GET abcdefghijklmnop://x HTTP/1.1\r\n"), HTTP1, 23},
    {"h1: 17-byte scheme", S("GET abcdefghijklmnopq://x HTTP/1.1\r\n"), OPAQUE, 21},
    {"h1: scheme starts with a digit", S("GET 1http://x HTTP/1.1\r\n"), OPAQUE, 5},
    {"h1: scheme then ':' only", S("GET http:x HTTP/1.1\r\n"), OPAQUE, 10},
    {"h1: scheme then ':/' only", S("GET http:/x HTTP/1.1\r\n"), OPAQUE, 11},
    {"h1: scheme then SP", S("GET http HTTP/1.1\r\n"), OPAQUE, 9},
    {"h1: relative path", S("GET index.html HTTP/1.1\r\n"), OPAQUE, 15},
    {"h1: two SPs", S("GET  / HTTP/1.1\r\n"), OPAQUE, 5},
    {"h1: percent first", S("GET %2F HTTP/1.1\r\n"), OPAQUE, 5},
    {"h1: the longest decision, 40 bytes",
     S("\r\n\r\nBASELINE-CONTROL abcdefghijklmnop://host/ HTTP/1.1\r\n"), HTTP1, 40},
    {"h1: 17-byte scheme at the far end",
     S("\r\n\r\nBASELINE-CONTROL abcdefghijklmnopq://host/ HTTP/1.1\r\n"), OPAQUE, 38},

    /* other protocols */
    {"other: Redis inline PING", S("PING\r\n"), OPAQUE, 2},
    {"other: Redis RESP", S("*1\r\n$4\r\nPING\r\n"), OPAQUE, 1},
    {"other: memcached get", S("get key\r\n"), OPAQUE, 1},
    {"other: memcached set (SE... is a prefix)", S("set k 0 0 1\r\nx\r\n"), OPAQUE, 1},
    {"other: SET upper case", S("SET k v\r\n"), OPAQUE, 3},
    {"other: SSH banner", S("SSH-2.0-OpenSSH_9.6\r\n"), OPAQUE, 2},
    {"other: MQTT CONNECT", S("\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c"), OPAQUE, 1},
    {"other: NUL", S("\0\0\0\0"), OPAQUE, 1},
    {"other: 40 bytes of a method-like word", S("UNSUBSCRIBEUNSUBSCRIBEUNSUBSCRIBEUNSUBSCRIBE"), OPAQUE, 12},
};

/* Every prefix of c->in, each ending at the guard page. */
static int check_case(const detect_case *c)
{
    size_t k;

    for (k = 0; k <= c->len; k++) {
        int want = k < c->at ? NEED : c->want;
        int got = fp_detect(place(c->in, k), k);
        if (got != want) {
            fprintf(stderr, "  %zu of %zu bytes: got %s, expected %s\n", k, c->len,
                    result_name(got), result_name(want));
            return 1;
        }
    }
    return 0;
}

/* ---- properties ---------------------------------------------------------- */

/* xorshift64*: a fixed sequence, so a failure reproduces. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(uint32_t bound)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (uint32_t)((g_rng * 0x2545f4914f6cdd1dull) >> 32) % bound;
}

/* Over mutations of the table's inputs (bytes replaced, inserted, deleted,
 * drawn mostly from bytes the rules look at): a decision, once made, stays;
 * no NEED_MORE from FP_DETECT_MAX_BYTES bytes on; no read past the end. */
static int case_mutations(void)
{
    static const char alphabet[] = "\r\n /*:[.+-PRIGETOSCNabhtp019\x16\x03\x01\x04\x40";
    char buf[96];
    int iter;

    for (iter = 0; iter < 20000; iter++) {
        const detect_case *seed = &k_cases[rnd(TK_NELEM(k_cases))];
        size_t n = seed->len < sizeof(buf) - 8 ? seed->len : sizeof(buf) - 8;
        int edits = (int)rnd(5), e;
        size_t k;
        int decided = NEED;

        memcpy(buf, seed->in, n);
        for (e = 0; e < edits; e++) {
            size_t pos = rnd((uint32_t)n + 1);
            char byte = rnd(4) ? alphabet[rnd(sizeof(alphabet) - 1)] : (char)rnd(256);
            switch (rnd(3)) {
            case 0: /* insert */
                if (n < sizeof(buf)) {
                    memmove(buf + pos + 1, buf + pos, n - pos);
                    buf[pos] = byte;
                    n++;
                }
                break;
            case 1: /* delete */
                if (pos < n) {
                    memmove(buf + pos, buf + pos + 1, n - pos - 1);
                    n--;
                }
                break;
            default: /* replace */
                if (pos < n)
                    buf[pos] = byte;
                break;
            }
        }
        for (k = 0; k <= n; k++) {
            int got = fp_detect(place(buf, k), k);
            if (got < NEED || got > OPAQUE) {
                fprintf(stderr, "  iteration %d, %zu bytes: result %d\n", iter, k, got);
                return 1;
            }
            if (decided != NEED && got != decided) {
                fprintf(stderr, "  iteration %d, %zu bytes: %s after %s\n", iter, k,
                        result_name(got), result_name(decided));
                return 1;
            }
            if (k >= FP_DETECT_MAX_BYTES && got == NEED) {
                fprintf(stderr, "  iteration %d: NEED_MORE at %zu bytes\n", iter, k);
                return 1;
            }
            decided = got;
        }
    }
    return 0;
}

/* Every byte value after a complete method and SP, and as the first byte:
 * decided at once, never NEED_MORE, except where a rule can still match. */
static int case_every_first_byte(void)
{
    char in[2];
    int b;

    for (b = 0; b < 256; b++) {
        int got;
        in[0] = (char)b;
        got = fp_detect(place(in, 1), 1);
        /* NEED_MORE only for CR (an empty line), 0x16 (TLS) and a method's
         * first letter */
        if (got == NEED)
            CHECK(b == '\r' || b == 0x16 || strchr("GHPDCOTMLUVRBASNQ", b) != NULL);
        else
            CHECK(got == OPAQUE);
    }
    for (b = 0; b < 256; b++) {
        char req[6] = "GET ";
        int got;
        req[4] = (char)b;
        got = fp_detect(place(req, 5), 5);
        if (b == '/')
            CHECK_EQ(got, HTTP1);
        else if ((b >= 'a' && b <= 'z') || (b >= 'A' && b <= 'Z'))
            CHECK_EQ(got, NEED);  /* a scheme may follow */
        else
            CHECK_EQ(got, OPAQUE);
    }
    return 0;
}

/* Whole inputs longer than FP_DETECT_MAX_BYTES: the same answer as their
 * first FP_DETECT_MAX_BYTES bytes (nothing past them is looked at). */
static int case_long_inputs(void)
{
    size_t i;

    for (i = 0; i < TK_NELEM(k_cases); i++) {
        const detect_case *c = &k_cases[i];
        char big[256];
        size_t n;
        if (c->len > sizeof(big) / 2)
            continue;
        memcpy(big, c->in, c->len);
        memset(big + c->len, 'x', sizeof(big) - c->len);
        for (n = FP_DETECT_MAX_BYTES; n <= sizeof(big); n += 37) {
            int got = fp_detect(place(big, n), n);
            CHECK(got != NEED);
            if (c->len >= c->at)
                CHECK_EQ(got, c->want);
            CHECK_EQ(got, fp_detect(place(big, FP_DETECT_MAX_BYTES), FP_DETECT_MAX_BYTES));
        }
    }
    return 0;
}

/* Zero bytes at the guard page: NEED_MORE, nothing read. */
static int case_empty(void)
{
    CHECK_EQ(fp_detect(tk_guard_end(&g_arena), 0), NEED);
    return 0;
}

static int case_guard_page_traps(void)
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

int main(void)
{
    static const tk_case props[] = {
        {"empty input at the guard page: NEED_MORE", case_empty},
        {"every first byte; every byte after \"GET \"", case_every_first_byte},
        {"inputs past 40 bytes: decided by their first 40", case_long_inputs},
        {"20000 mutations: decisions stay, none pending at 40 bytes", case_mutations},
    };
    size_t i;

    tk_guard_init(&g_arena, 4096);
    tk_report("setup", "guard page traps over-reads", case_guard_page_traps());
    for (i = 0; i < TK_NELEM(k_cases); i++)
        tk_report(NULL, k_cases[i].name, check_case(&k_cases[i]));
    tk_run_cases(props, TK_NELEM(props));
    return tk_finish();
}
