# cython: language_level=3
"""Thin wrapper over csrc/detect.c: which protocol a connection speaks.

``detect(data)`` is fastproxy.proto.detect.detect() in C, with the same rules
and the same answers (the strings NEED_MORE, HTTP1, HTTP2, TLS, OPAQUE of
that module); tests/unit/test_detect_native.py keeps the two equal.
``detect_code(data)`` returns the C result code (the FP_DETECT_* integers
below) instead, for callers that switch on it.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastproxy.proto.detect import HTTP1, HTTP2, NEED_MORE, OPAQUE, TLS

# detect.pxd (the extern declarations of detect.h) is included implicitly.

CODE_NEED_MORE = FP_DETECT_NEED_MORE
CODE_HTTP1 = FP_DETECT_HTTP1
CODE_HTTP2 = FP_DETECT_HTTP2
CODE_TLS = FP_DETECT_TLS
CODE_OPAQUE = FP_DETECT_OPAQUE
MAX_DETECT_BYTES = FP_DETECT_MAX_BYTES

# indexed by the result code
cdef tuple _NAMES = (NEED_MORE, HTTP1, HTTP2, TLS, OPAQUE)


cdef int _code(object data) except -1:
    cdef Py_buffer view
    cdef int rc
    if type(data) is bytes:
        return fp_detect(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        rc = fp_detect(<const char *>view.buf, <size_t>view.len)
    finally:
        PyBuffer_Release(&view)
    return rc


def detect(data):
    """NEED_MORE, HTTP1, HTTP2, TLS or OPAQUE for a connection's first bytes
    (any contiguous bytes-like object)."""
    return _NAMES[_code(data)]


def detect_code(data):
    """As detect(), as a CODE_* integer."""
    return _code(data)
