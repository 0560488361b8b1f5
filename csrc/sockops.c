/* sockops.c - see sockops.h for the contract of every function. */
#define _GNU_SOURCE
#include "sockops.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* From <linux/netfilter_ipv4.h> / <linux/netfilter_ipv6/ip6_tables.h>;
 * spelled out so the build needs no kernel headers. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

static int from_sockaddr(const struct sockaddr_storage *ss, fp_addr *out) {
    memset(out, 0, sizeof *out);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        out->family = AF_INET;
        out->port = ntohs(in->sin_port);
        memcpy(out->ip, &in->sin_addr, 4);
        return 0;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        /* A v4-mapped peer on a dual-stack socket is reported as plain IPv4. */
        if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
            out->family = AF_INET;
            memcpy(out->ip, &in6->sin6_addr.s6_addr[12], 4);
        } else {
            out->family = AF_INET6;
            memcpy(out->ip, &in6->sin6_addr, 16);
        }
        out->port = ntohs(in6->sin6_port);
        return 0;
    }
    return -EAFNOSUPPORT;
}

static socklen_t to_sockaddr(const fp_addr *a, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    if (a->family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(a->port);
        memcpy(&in->sin_addr, a->ip, 4);
        return sizeof *in;
    }
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(a->port);
    memcpy(&in6->sin6_addr, a->ip, 16);
    return sizeof *in6;
}

int fp_accept_batch(int lfd, int *fds, int max) {
    int n = 0;
    static const int one = 1;
    while (n < max) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EINTR || e == ECONNABORTED || e == EPROTO)
                continue;
            if (e == EAGAIN || e == EWOULDBLOCK)
                break;
            if (n > 0)   /* report the error on the next call, after these are served */
                break;
            return -e;
        }
        /* The relay forwards whatever arrives at once; Nagle would only add delay. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fds[n++] = fd;
    }
    return n;
}

int fp_local_addr(int fd, fp_addr *out) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    return from_sockaddr(&ss, out);
}

int fp_peer_addr(int fd, fp_addr *out) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
        return -errno;
    return from_sockaddr(&ss, out);
}

int fp_original_dst(int fd, fp_addr *out, int *redirected) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int rc = fp_local_addr(fd, out);
    *redirected = 0;
    if (rc < 0)
        return rc;
    /* The NAT lookup is per family of the connection, not of the socket. */
    memset(&ss, 0, sizeof ss);
    if (out->family == AF_INET) {
        if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len) == 0) {
            *redirected = 1;
            return from_sockaddr(&ss, out);
        }
    } else {
        if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len) == 0) {
            *redirected = 1;
            return from_sockaddr(&ss, out);
        }
    }
    /* No conntrack NAT entry (ENOENT) or no netfilter at all: the local
     * address is the destination (direct connection or TPROXY). */
    return 0;
}

static int start_connect(const fp_addr *dst, const fp_addr *src, int transparent, uint32_t mark,
                         int *in_progress) {
    struct sockaddr_storage ss;
    static const int one = 1;
    int fd = socket(dst->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    *in_progress = 0;
    if (fd < 0)
        return -errno;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (transparent) {
        int rc = dst->family == AF_INET6
            ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one)
            : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one);
        if (rc == 0 && mark != 0)
            rc = setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof mark);
        if (rc < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    if (src != NULL && src->family == dst->family) {
        socklen_t slen = to_sockaddr(src, &ss);
        /* FREEBIND: 127.0.0.6 need not be configured on lo to be used as a source. */
        if (dst->family == AF_INET)
            setsockopt(fd, SOL_IP, IP_FREEBIND, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&ss, slen) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    socklen_t dlen = to_sockaddr(dst, &ss);
    if (connect(fd, (struct sockaddr *)&ss, dlen) < 0) {
        int e = errno;
        if (e == EINPROGRESS) {
            *in_progress = 1;
            return fd;
        }
        close(fd);
        return -e;
    }
    return fd;
}

int fp_connect(const fp_addr *dst, const fp_addr *src, int *in_progress) {
    return start_connect(dst, src, 0, 0, in_progress);
}

int fp_connect_transparent(const fp_addr *dst, const fp_addr *src, uint32_t mark, int *in_progress) {
    *in_progress = 0;
    if (src == NULL || src->family != dst->family)
        return -EINVAL;
    return start_connect(dst, src, 1, mark, in_progress);
}

int fp_connect_result(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return -errno;
    return -err;
}

void fp_sock_abort(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

void fp_sock_close(int fd) {
    /* On Linux the fd is released even when close() reports EINTR: never retry. */
    close(fd);
}
