/* bench_http1.c - ns per parse of a realistic ~500-byte request head.
 *
 * Not a test (`make test-c` only builds tests/c/test_*.c). One tight loop
 * per variant over the same buffer; every iteration asserts that the whole
 * head was consumed and all fields were found. Reports the best of 7 runs.
 *
 *   gcc -std=gnu99 -O2 -Icsrc -o build/bench_http1 tests/c/bench_http1.c csrc/http1.c
 *   ./build/bench_http1
 *
 * csrc/http1.c is linked as the build flags make it (scalar without
 * -msse4.2); a second copy is compiled into this file the other way (by
 * testkit.h, as for test_http1.c), so one run measures both scanners.
 */
#define TESTKIT_HTTP1_ALT 1 /* the second copy of csrc/http1.c, alt_ names */
#include "testkit.h"

/* What a sidecar sees from a browser behind an ingress: 10 fields. */
static const char REQ[] =
    "GET /api/v1/catalog/items?category=books&page=2 HTTP/1.1\r\n"
    "Host: shop.example.com\r\n"
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0\r\n"
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    "Accept-Language: en-US,en;q=0.5\r\n"
    "Accept-Encoding: gzip, deflate, br\r\n"
    "Cookie: session=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n"
    "X-Forwarded-For: 203.0.113.7\r\n"
    "X-Request-Id: 3f1c2a9e-7b4d-4c2a-9f1e-5d6b7a8c9d0e\r\n"
    "Connection: keep-alive\r\n"
    "Cache-Control: no-cache\r\n"
    "\r\n";
#define NFIELDS 10

typedef struct variant {
    const char *(*simd)(void);
    void (*init)(http1_parser *, http1_header *, uint32_t, const http1_limits *);
    int (*parse)(http1_parser *, const char *, size_t);
    int (*framing)(const char *, http1_span, int, const http1_header *, uint32_t,
                   http1_framing *);
} variant;

static double run(const variant *v, const char *buf, size_t len, long iters, int with_framing)
{
    http1_parser p;
    http1_header h[100];
    http1_framing f;
    double best = 1e30;
    int rep;

    for (rep = 0; rep < 7; rep++) {
        double t0 = tk_now_ns();
        long i;
        for (i = 0; i < iters; i++) {
            v->init(&p, h, 100, NULL);
            if (v->parse(&p, buf, len) != (int)len || p.num_headers != NFIELDS) {
                fprintf(stderr, "parse failed: %s\n", p.err.reason ? p.err.reason : "incomplete or fields missing");
                exit(1);
            }
            if (with_framing &&
                (v->framing(buf, p.method, p.minor_version, h, p.num_headers, &f) != 0 ||
                 !f.keep_alive)) {
                fprintf(stderr, "framing failed\n");
                exit(1);
            }
            __asm__ __volatile__("" : : "r"(&p), "r"(&f) : "memory");
        }
        double ns = (tk_now_ns() - t0) / (double)iters;
        if (ns < best)
            best = ns;
    }
    return best;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 500000;
    size_t len = sizeof(REQ) - 1;
    char *buf = malloc(len);
    const variant vs[] = {
        {http1_simd, http1_parser_init, http1_parse_request, http1_request_framing},
#ifdef TK_HTTP1_HAVE_ALT
        {alt_http1_simd, alt_http1_parser_init, alt_http1_parse_request,
         alt_http1_request_framing},
#endif
    };
    size_t i;

    memcpy(buf, REQ, len);
    printf("request head: %zu bytes, %d fields, %ld iterations, best of 7\n", len, NFIELDS, iters);
    for (i = 0; i < sizeof(vs) / sizeof(vs[0]); i++) {
        if (strcmp(vs[i].simd(), "sse4.2") == 0 && !__builtin_cpu_supports("sse4.2"))
            continue;
        double a = run(&vs[i], buf, len, iters, 0);
        double b = run(&vs[i], buf, len, iters, 1);
        printf("%-7s parse %6.1f ns (%.2f GB/s)   parse+framing %6.1f ns\n", vs[i].simd(), a,
               (double)len / a, b);
    }
    free(buf);
    return 0;
}
