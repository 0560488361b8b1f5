/* rewrite.c - see rewrite.h for every contract. */
#include "rewrite.h"

#include <string.h>

/* ---- bytes ------------------------------------------------------------- */

static inline unsigned char lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + ('a' - 'A')) : c;
}

static int is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~':
        return 1;
    default:
        return 0;
    }
}

/* URI authority characters (what Host may hold). */
static int is_host_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return 1;
    switch (c) {
    case '-': case '.': case '_': case '~': case '%': case '!': case '$': case '&':
    case '\'': case '(': case ')': case '*': case '+': case ',': case ';': case '=':
    case ':': case '[': case ']':
        return 1;
    default:
        return 0;
    }
}

/* field-value bytes: HTAB, SP, VCHAR, obs-text */
static inline int is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int all_tchar(const char *s, size_t n)
{
    size_t i;

    if (n == 0)
        return 0;
    for (i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i]))
            return 0;
    return 1;
}

static int all_host(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (!is_host_char((unsigned char)s[i]))
            return 0;
    return 1;
}

/* Case-insensitive equality of two names (both sides folded). */
static inline int name_eq(const char *a, size_t an, const char *b, size_t bn)
{
    size_t i;

    if (an != bn)
        return 0;
    for (i = 0; i < an; i++)
        if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
            return 0;
    return 1;
}

/* Equality of a name with a lower-case literal. */
static inline int name_is(const char *s, size_t n, const char *lit, size_t litn)
{
    size_t i;

    if (n != litn)
        return 0;
    for (i = 0; i < n; i++)
        if (lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return 0;
    return 1;
}

#define NAME_IS(s, n, lit) name_is((s), (n), lit, sizeof(lit) - 1)

/* ---- field names the rewriter knows ------------------------------------ */

enum kind {
    K_OTHER = 0,
    K_HOP,      /* Connection, Keep-Alive, Proxy-Connection, TE, Trailer */
    K_UPGRADE,
    K_TE,       /* Transfer-Encoding */
    K_CL,       /* Content-Length */
    K_HOST,     /* the kinds from here on only mean something in requests */
    K_XFF,
    K_XFP,
    K_XRID
};

static int kind_of(const char *s, size_t n)
{
    /* dispatch on length first: most names are none of these */
    switch (n) {
    case 2:
        if (NAME_IS(s, n, "te"))
            return K_HOP;
        break;
    case 4:
        if (NAME_IS(s, n, "host"))
            return K_HOST;
        break;
    case 7:
        if (NAME_IS(s, n, "trailer"))
            return K_HOP;
        if (NAME_IS(s, n, "upgrade"))
            return K_UPGRADE;
        break;
    case 10:
        if (NAME_IS(s, n, "connection") || NAME_IS(s, n, "keep-alive"))
            return K_HOP;
        break;
    case 12:
        if (NAME_IS(s, n, "x-request-id"))
            return K_XRID;
        break;
    case 14:
        if (NAME_IS(s, n, "content-length"))
            return K_CL;
        break;
    case 15:
        if (NAME_IS(s, n, "x-forwarded-for"))
            return K_XFF;
        break;
    case 16:
        if (NAME_IS(s, n, "proxy-connection"))
            return K_HOP;
        break;
    case 17:
        if (NAME_IS(s, n, "transfer-encoding"))
            return K_TE;
        if (NAME_IS(s, n, "x-forwarded-proto"))
            return K_XFP;
        break;
    default:
        break;
    }
    return K_OTHER;
}

/* Names route operations may not touch: the proxy owns them. */
static int owned_by_proxy(const char *s, size_t n)
{
    int k = kind_of(s, n);
    return k == K_HOP || k == K_UPGRADE || k == K_TE || k == K_CL || k == K_HOST;
}

/* ---- checks -------------------------------------------------------------- */

static const char *check_value(rw_str v)
{
    uint32_t i;

    for (i = 0; i < v.len; i++)
        if (!is_value_char((unsigned char)v.ptr[i]))
            return "invalid byte in a header value";
    if (v.len > 0) {
        unsigned char a = (unsigned char)v.ptr[0], z = (unsigned char)v.ptr[v.len - 1];
        if (a == ' ' || a == '\t' || z == ' ' || z == '\t')
            return "whitespace around a header value";
    }
    return NULL;
}

static const char *check_name(rw_str n)
{
    if (!all_tchar(n.ptr, n.len))
        return "invalid header name";
    if (owned_by_proxy(n.ptr, n.len))
        return "header owned by the proxy (hop-by-hop, framing or Host)";
    return NULL;
}

const char *rw_ops_check(const rw_ops *ops)
{
    const char *why;
    uint32_t i, j;

    if (ops->nset > RW_MAX_SET)
        return "too many set operations";
    if ((ops->nset && !ops->set) || (ops->nadd && !ops->add) || (ops->nremove && !ops->remove))
        return "operation array missing";
    for (i = 0; i < ops->nset; i++) {
        if ((why = check_name(ops->set[i].name)) || (why = check_value(ops->set[i].value)))
            return why;
        for (j = 0; j < i; j++)
            if (name_eq(ops->set[i].name.ptr, ops->set[i].name.len, ops->set[j].name.ptr,
                        ops->set[j].name.len))
                return "header set twice";
    }
    for (i = 0; i < ops->nadd; i++)
        if ((why = check_name(ops->add[i].name)) || (why = check_value(ops->add[i].value)))
            return why;
    for (i = 0; i < ops->nremove; i++)
        if ((why = check_name(ops->remove[i])))
            return why;
    if (ops->rewrite_path) {
        for (i = 0; i < ops->path.len; i++) {
            unsigned char c = (unsigned char)ops->path.ptr[i];
            if (c < 0x21 || c > 0x7e || c == '?' || c == '#')
                return "invalid byte in the path rewrite";
        }
    }
    if (ops->rewrite_authority && (ops->authority.len == 0 ||
                                   !all_host(ops->authority.ptr, ops->authority.len)))
        return "invalid authority rewrite";
    return NULL;
}

/* ctx->extra: token ":" field-value CRLF, repeated. */
static int extra_ok(rw_str e)
{
    const unsigned char *s = (const unsigned char *)e.ptr;
    size_t i = 0, n = e.len;

    while (i < n) {
        size_t start = i;
        while (i < n && is_tchar(s[i]))
            i++;
        if (i == start || i >= n || s[i] != ':')
            return 0;
        i++;
        while (i < n && is_value_char(s[i]))
            i++;
        if (n - i < 2 || s[i] != '\r' || s[i + 1] != '\n')
            return 0;
        i += 2;
    }
    return 1;
}

static int ctx_ok(const rw_ctx *c, int is_request)
{
    uint32_t i;

    if (c->version_minor != 0 && c->version_minor != 1)
        return 0;
    if (c->connection < RW_CONN_NONE || c->connection > RW_CONN_UPGRADE)
        return 0;
    if (c->flags & ~RW_DROP_TRANSFER_ENCODING)
        return 0;
    if (!extra_ok(c->extra))
        return 0;
    if (!is_request)
        return 1;
    for (i = 0; i < c->peer.len; i++) {
        unsigned char ch = (unsigned char)c->peer.ptr[i];
        if (ch < 0x21 || ch > 0x7e || ch == ',')
            return 0;
    }
    if (c->proto.len && !all_tchar(c->proto.ptr, c->proto.len))
        return 0;
    return all_host(c->default_host.ptr, c->default_host.len);
}

void rw_ctx_init(rw_ctx *ctx)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->version_minor = 1;
    ctx->connection = RW_CONN_NONE;
}

/* ---- the writer -------------------------------------------------------- */

/* Counts every byte; copies while they fit. Once one piece did not fit
 * (n > cap), nothing more is copied. */
typedef struct wr {
    char *out;
    size_t cap;
    size_t n;
} wr;

static inline void put(wr *w, const char *s, size_t k)
{
    if (k == 0)
        return;
    if (w->n <= w->cap && k <= w->cap - w->n)
        memcpy(w->out + w->n, s, k);
    w->n += k;
}

#define PUT_LIT(w, lit) put((w), lit, sizeof(lit) - 1)

static inline void put_field(wr *w, const char *name, size_t nl, const char *val, size_t vl)
{
    put(w, name, nl);
    if (vl) {
        PUT_LIT(w, ": ");
        put(w, val, vl);
    } else {
        PUT_LIT(w, ":");
    }
    PUT_LIT(w, "\r\n");
}

/* A received field line, kept: when it was sent as `name: value` CRLF (the
 * usual case) its bytes are copied in one piece, else rebuilt that way.
 * Reads only bytes of the line (the CR checked is the one ending it). */
static inline void put_received(wr *w, const char *buf, const http1_header *h)
{
    const char *nm = buf + h->name.off;
    uint32_t nl = h->name.len, vl = h->value.len;

    if (vl && h->value.off == h->name.off + nl + 2 && nm[nl + 1] == ' ' &&
        buf[h->value.off + vl] == '\r')
        put(w, nm, (size_t)nl + 2 + vl + 2); /* the CR is followed by LF (http1.h) */
    else
        put_field(w, nm, nl, buf + h->value.off, vl);
}

static int64_t finish(const wr *w)
{
    return w->n <= w->cap ? (int64_t)w->n : -(int64_t)w->n;
}

void rw_uuid4(const uint8_t rnd[16], char out[RW_UUID_LEN])
{
    static const char hex[] = "0123456789abcdef";
    int i, o = 0;

    for (i = 0; i < 16; i++) {
        uint8_t b = rnd[i];
        if (i == 6)
            b = (uint8_t)((b & 0x0f) | 0x40); /* version 4 */
        else if (i == 8)
            b = (uint8_t)((b & 0x3f) | 0x80); /* variant 10 */
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[b >> 4];
        out[o++] = hex[b & 0x0f];
    }
}

/* ---- fields -------------------------------------------------------------- */

static int named_by_connection(const char *buf, const http1_framing *f, const char *s, size_t n)
{
    uint32_t i;

    for (i = 0; i < f->num_conn_tokens && i < HTTP1_MAX_CONN_TOKENS; i++)
        if (name_eq(buf + f->conn_tokens[i].off, f->conn_tokens[i].len, s, n))
            return 1;
    return 0;
}

static int removed_by(const rw_ops *ops, const char *s, size_t n)
{
    uint32_t i;

    for (i = 0; i < ops->nremove; i++)
        if (name_eq(ops->remove[i].ptr, ops->remove[i].len, s, n))
            return 1;
    return 0;
}

static int set_index(const rw_ops *ops, const char *s, size_t n)
{
    uint32_t i;

    for (i = 0; i < ops->nset; i++)
        if (name_eq(ops->set[i].name.ptr, ops->set[i].name.len, s, n))
            return (int)i;
    return -1;
}

/* Does the route set or remove the lower-case name lit? */
static int touched_by(const rw_ops *ops, const char *lit, size_t litn)
{
    uint32_t i;

    if (!ops)
        return 0;
    for (i = 0; i < ops->nremove; i++)
        if (name_is(ops->remove[i].ptr, ops->remove[i].len, lit, litn))
            return 1;
    for (i = 0; i < ops->nset; i++)
        if (name_is(ops->set[i].name.ptr, ops->set[i].name.len, lit, litn))
            return 1;
    return 0;
}

#define TOUCHED(ops, lit) touched_by((ops), lit, sizeof(lit) - 1)

/* What a request adds to the field loop. */
typedef struct req_plan {
    const char *host;      /* replacement Host value, or NULL              */
    size_t host_len;
    int64_t last_xff;      /* the received x-forwarded-for to append to    */
    int xff;               /* 1: peer goes into x-forwarded-for            */
    int xfp;               /* 1: proto replaces x-forwarded-proto          */
} req_plan;

/* The received fields, filtered and modified in place. Reports whether an
 * x-forwarded-proto was written and which set operations were (the caller
 * appends the rest). rq is NULL for a response. */
static void write_fields(wr *w, const char *buf, const http1_parser *p, const http1_framing *f,
                         const rw_ops *ops, const rw_ctx *ctx, const req_plan *rq,
                         int *xfp_written, uint64_t *set_written)
{
    uint64_t set_done = 0;
    int host_done = 0;
    uint32_t i;

    *xfp_written = 0;
    for (i = 0; i < p->num_headers; i++) {
        const char *nm = buf + p->headers[i].name.off;
        size_t nl = p->headers[i].name.len;
        const char *val = buf + p->headers[i].value.off;
        size_t vl = p->headers[i].value.len;
        int k = kind_of(nm, nl);

        if (!rq && k >= K_HOST)
            k = K_OTHER;
        switch (k) {
        case K_HOP:
            continue;
        case K_UPGRADE:
            if (ctx->connection == RW_CONN_UPGRADE)
                put_received(w, buf, &p->headers[i]);
            continue;
        case K_TE:
            if (!(ctx->flags & RW_DROP_TRANSFER_ENCODING))
                put_received(w, buf, &p->headers[i]);
            continue;
        case K_CL:
            put_received(w, buf, &p->headers[i]);
            continue;
        case K_HOST:
            if (rq->host) {
                if (!host_done)
                    put_field(w, nm, nl, rq->host, rq->host_len);
                host_done = 1;
            } else {
                put_received(w, buf, &p->headers[i]);
            }
            continue;
        default:
            break;
        }
        if (f->num_conn_tokens && named_by_connection(buf, f, nm, nl))
            continue;
        if (ops) {
            int j;
            if (ops->nremove && removed_by(ops, nm, nl))
                continue;
            if (ops->nset && (j = set_index(ops, nm, nl)) >= 0) {
                if (!(set_done & ((uint64_t)1 << j)))
                    put_field(w, nm, nl, ops->set[j].value.ptr, ops->set[j].value.len);
                set_done |= (uint64_t)1 << j;
                continue;
            }
        }
        if (k == K_XFF && rq->xff && (int64_t)i == rq->last_xff) {
            put(w, nm, nl);
            PUT_LIT(w, ": ");
            if (vl) {
                put(w, val, vl);
                PUT_LIT(w, ", ");
            }
            put(w, ctx->peer.ptr, ctx->peer.len);
            PUT_LIT(w, "\r\n");
            continue;
        }
        if (k == K_XFP && rq->xfp) {
            if (!*xfp_written)
                put_field(w, nm, nl, ctx->proto.ptr, ctx->proto.len);
            *xfp_written = 1;
            continue;
        }
        put_received(w, buf, &p->headers[i]);
    }

    *set_written = set_done;
}

/* The route's appended fields: set operations with no received field to
 * replace, then add operations. */
static void write_route_tail(wr *w, const rw_ops *ops, uint64_t set_done)
{
    uint32_t i;

    if (!ops)
        return;
    for (i = 0; i < ops->nset; i++)
        if (!(set_done & ((uint64_t)1 << i)))
            put_field(w, ops->set[i].name.ptr, ops->set[i].name.len, ops->set[i].value.ptr,
                      ops->set[i].value.len);
    for (i = 0; i < ops->nadd; i++)
        put_field(w, ops->add[i].name.ptr, ops->add[i].name.len, ops->add[i].value.ptr,
                  ops->add[i].value.len);
}

/* Connection, extra, and the final CRLF. */
static void write_end(wr *w, const rw_ctx *ctx)
{
    switch (ctx->connection) {
    case RW_CONN_CLOSE:
        PUT_LIT(w, "Connection: close\r\n");
        break;
    case RW_CONN_KEEP_ALIVE:
        PUT_LIT(w, "Connection: keep-alive\r\n");
        break;
    case RW_CONN_UPGRADE:
        PUT_LIT(w, "Connection: upgrade\r\n");
        break;
    default:
        break;
    }
    put(w, ctx->extra.ptr, ctx->extra.len);
    PUT_LIT(w, "\r\n");
}

static void put_version(wr *w, int minor)
{
    if (minor == 0)
        PUT_LIT(w, "HTTP/1.0");
    else
        PUT_LIT(w, "HTTP/1.1");
}

/* ---- requests ---------------------------------------------------------- */

/* The request-target, split: write `lead` (possibly prepending '/'), the
 * path remainder and the query. */
typedef struct target_parts {
    int verbatim;          /* asterisk-form or CONNECT: write as received */
    const char *authority; /* absolute-form authority                     */
    size_t authority_len;
    const char *path;      /* path: before '?' (may be empty)             */
    size_t path_len;
    const char *query;     /* from '?' on (may be empty)                  */
    size_t query_len;
} target_parts;

static void split_target(const char *buf, const http1_parser *p, target_parts *t)
{
    const char *s = buf + p->target.off;
    size_t n = p->target.len, i, pq;

    memset(t, 0, sizeof(*t));
    if (n == 0 || (p->method.len == 7 && memcmp(buf + p->method.off, "CONNECT", 7) == 0) ||
        (n == 1 && s[0] == '*')) {
        t->verbatim = 1;
        return;
    }
    pq = 0;
    if (s[0] != '/') {
        /* absolute-form: scheme "://" authority [ "/" ... ] [ "?" ... ] */
        size_t a;
        for (i = 0; i + 2 < n; i++)
            if (s[i] == ':' && s[i + 1] == '/' && s[i + 2] == '/')
                break;
        if (i + 2 >= n) {
            t->verbatim = 1; /* not what http1.h accepts: leave it alone */
            return;
        }
        a = i + 3;
        for (i = a; i < n && s[i] != '/' && s[i] != '?' && s[i] != '#'; i++)
            ;
        pq = i;
        t->authority = s + a;
        t->authority_len = pq - a;
    }
    for (i = pq; i < n && s[i] != '?'; i++)
        ;
    t->path = s + pq;
    t->path_len = i - pq;
    t->query = s + i;
    t->query_len = n - i;
}

static void write_target(wr *w, const char *buf, const http1_parser *p, const target_parts *t,
                         const rw_ops *ops)
{
    const char *lead = NULL, *rest = t->path;
    size_t lead_len = 0, rest_len = t->path_len;
    char first;

    if (t->verbatim) {
        put(w, buf + p->target.off, p->target.len);
        return;
    }
    if (ops && ops->rewrite_path) {
        size_t cut = ops->path_prefix_len < rest_len ? ops->path_prefix_len : rest_len;
        lead = ops->path.ptr;
        lead_len = ops->path.len;
        rest += cut;
        rest_len -= cut;
    }
    first = lead_len ? lead[0] : (rest_len ? rest[0] : 0);
    if (first != '/')
        PUT_LIT(w, "/");
    put(w, lead, lead_len);
    put(w, rest, rest_len);
    put(w, t->query, t->query_len);
}

int64_t rw_request(const char *buf, const http1_parser *p, const http1_framing *f,
                   const rw_ops *ops, const rw_ctx *ctx, char *out, size_t cap)
{
    rw_ctx dflt;
    wr w;
    req_plan rq;
    target_parts t;
    uint64_t set_done;
    int have_host = 0, have_xrid = 0, xfp_written;
    uint32_t i;

    if (!buf || !p || !f || (!out && cap))
        return 0;
    if (!ctx) {
        rw_ctx_init(&dflt);
        ctx = &dflt;
    }
    if (!ctx_ok(ctx, 1))
        return 0;
    w.out = out;
    w.cap = cap;
    w.n = 0;

    memset(&rq, 0, sizeof(rq));
    rq.last_xff = -1;
    rq.xff = ctx->peer.len > 0 && !TOUCHED(ops, "x-forwarded-for");
    rq.xfp = ctx->proto.len > 0 && !TOUCHED(ops, "x-forwarded-proto");
    for (i = 0; i < p->num_headers; i++) {
        const char *nm = buf + p->headers[i].name.off;
        size_t nl = p->headers[i].name.len;
        int k = kind_of(nm, nl);

        if (k == K_HOST)
            have_host = 1;
        else if ((k == K_XFF || k == K_XRID) &&
                 !(f->num_conn_tokens && named_by_connection(buf, f, nm, nl))) {
            if (k == K_XFF)
                rq.last_xff = (int64_t)i;
            else
                have_xrid = 1;
        }
    }

    split_target(buf, p, &t);
    if (t.authority_len > 0 && !all_host(t.authority, t.authority_len))
        return 0; /* userinfo, or bytes no Host may hold: refuse */
    if (ops && ops->rewrite_authority) {
        rq.host = ops->authority.ptr;
        rq.host_len = ops->authority.len;
    } else if (t.authority_len > 0) {
        rq.host = t.authority;
        rq.host_len = t.authority_len;
    }

    put(&w, buf + p->method.off, p->method.len);
    PUT_LIT(&w, " ");
    write_target(&w, buf, p, &t, ops);
    PUT_LIT(&w, " ");
    put_version(&w, ctx->version_minor);
    PUT_LIT(&w, "\r\n");

    if (!have_host) {
        if (rq.host)
            put_field(&w, "Host", 4, rq.host, rq.host_len);
        else if (ctx->default_host.len)
            put_field(&w, "Host", 4, ctx->default_host.ptr, ctx->default_host.len);
    }

    write_fields(&w, buf, p, f, ops, ctx, &rq, &xfp_written, &set_done);

    if (rq.xff && rq.last_xff < 0)
        put_field(&w, "x-forwarded-for", 15, ctx->peer.ptr, ctx->peer.len);
    if (rq.xfp && !xfp_written)
        put_field(&w, "x-forwarded-proto", 17, ctx->proto.ptr, ctx->proto.len);
    if (ctx->request_id && !have_xrid && !TOUCHED(ops, "x-request-id")) {
        char id[RW_UUID_LEN];
        rw_uuid4(ctx->request_id, id);
        put_field(&w, "x-request-id", 12, id, RW_UUID_LEN);
    }
    write_route_tail(&w, ops, set_done);
    write_end(&w, ctx);
    return finish(&w);
}

/* ---- responses --------------------------------------------------------- */

int64_t rw_response(const char *buf, const http1_parser *p, const http1_framing *f,
                    const rw_ops *ops, const rw_ctx *ctx, char *out, size_t cap)
{
    rw_ctx dflt;
    wr w;
    uint64_t set_done;
    int xfp_written;
    char code[4];

    if (!buf || !p || !f || (!out && cap) || p->status < 100 || p->status > 999)
        return 0;
    if (!ctx) {
        rw_ctx_init(&dflt);
        ctx = &dflt;
    }
    if (!ctx_ok(ctx, 0))
        return 0;
    w.out = out;
    w.cap = cap;
    w.n = 0;

    put_version(&w, ctx->version_minor);
    code[0] = ' ';
    code[1] = (char)('0' + p->status / 100);
    code[2] = (char)('0' + p->status / 10 % 10);
    code[3] = (char)('0' + p->status % 10);
    put(&w, code, 4);
    PUT_LIT(&w, " ");
    put(&w, buf + p->reason.off, p->reason.len);
    PUT_LIT(&w, "\r\n");
    write_fields(&w, buf, p, f, ops, ctx, NULL, &xfp_written, &set_done);
    write_route_tail(&w, ops, set_done);
    write_end(&w, ctx);
    return finish(&w);
}
