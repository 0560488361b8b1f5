/* detect.h - which protocol a connection speaks, from its first bytes.
 *
 * Plain C99, no allocation, no I/O. The same rules as
 * fastproxy/proto/detect.py detect() (that file states them; a differential
 * test keeps the two equal): HTTP/2 preface, TLS ClientHello record header,
 * an HTTP/1 request start (known method, SP, a target start that fits the
 * method), else opaque. It decides as early as the bytes allow and never
 * answers FP_DETECT_NEED_MORE once len >= FP_DETECT_MAX_BYTES.
 */
#ifndef FASTPROXY_DETECT_H
#define FASTPROXY_DETECT_H

#include <stddef.h>

#define FP_DETECT_NEED_MORE 0
#define FP_DETECT_HTTP1     1
#define FP_DETECT_HTTP2     2
#define FP_DETECT_TLS       3
#define FP_DETECT_OPAQUE    4

/* Bytes after which a decision is always made (= detect.py MAX_DETECT_BYTES). */
#define FP_DETECT_MAX_BYTES 40

/* Classifies buf[0..len), everything the client sent so far. */
int fp_detect(const char *buf, size_t len);

#endif /* FASTPROXY_DETECT_H */
