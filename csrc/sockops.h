/* sockops.h - the one seam through which the data path makes its socket
 * syscalls: batched accept, original destination, non-blocking connect, abort.
 *
 * Addresses cross this API as fp_addr: family, 16 address bytes (IPv4 uses
 * the first 4) and a host-order port, so callers never touch sockaddr.
 * All functions return >= 0 on success or a negative errno.
 */
#ifndef FASTPROXY_SOCKOPS_H
#define FASTPROXY_SOCKOPS_H

#include <stdint.h>

typedef struct fp_addr {
    int family;              /* AF_INET or AF_INET6 */
    uint16_t port;           /* host byte order */
    uint8_t ip[16];          /* network byte order; IPv4 in ip[0..3] */
} fp_addr;

/* Accepts up to max connections from a non-blocking listening socket into
 * fds[] (accept4 with SOCK_NONBLOCK|SOCK_CLOEXEC, TCP_NODELAY set).
 * Returns how many were accepted (0 when none was pending), or a negative
 * errno for errors other than EAGAIN/ECONNABORTED/EINTR/EPROTO. EMFILE and
 * ENFILE are returned so the caller can back off. */
int fp_accept_batch(int lfd, int *fds, int max);

/* The destination the client originally asked for: SO_ORIGINAL_DST (IPv4)
 * or IP6T_SO_ORIGINAL_DST (IPv6) when netfilter NAT redirected the
 * connection, otherwise the socket's local address (which is also what a
 * TPROXY listener sees). *redirected is set to 1 when NAT gave the address. */
int fp_original_dst(int fd, fp_addr *out, int *redirected);

/* The socket's local and peer addresses. */
int fp_local_addr(int fd, fp_addr *out);
int fp_peer_addr(int fd, fp_addr *out);

/* Starts a non-blocking TCP connect to dst, optionally binding the source
 * address first (src may be NULL; IP_FREEBIND is set so 127.0.0.6 works).
 * Returns the new fd; *in_progress = 1 when the caller must wait for
 * writability and then call fp_connect_result(). */
int fp_connect(const fp_addr *dst, const fp_addr *src, int *in_progress);

/* fp_connect from a source address that need not be local: TPROXY source
 * preservation (what Envoy's original_src filter does). Before binding to
 * src (required, same family as dst), the socket gets IP_TRANSPARENT (or
 * IPV6_TRANSPARENT) and, when mark != 0, SO_MARK = mark, so policy routing
 * can send the peer's replies back to this host. Both need CAP_NET_ADMIN:
 * -EPERM without it; -EINVAL when src is NULL or of another family. */
int fp_connect_transparent(const fp_addr *dst, const fp_addr *src, uint32_t mark, int *in_progress);

/* After writability: 0 if the connect succeeded, else the negative errno. */
int fp_connect_result(int fd);

/* Closes fd so that the peer sees a reset (SO_LINGER {1, 0}). */
void fp_sock_abort(int fd);

/* Plain close, ignoring EINTR. */
void fp_sock_close(int fd);

#endif
