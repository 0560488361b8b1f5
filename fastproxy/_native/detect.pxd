# extern declarations only: csrc/detect.h (the contract is written there)


cdef extern from "detect.h" nogil:
    enum:
        FP_DETECT_NEED_MORE
        FP_DETECT_HTTP1
        FP_DETECT_HTTP2
        FP_DETECT_TLS
        FP_DETECT_OPAQUE
        FP_DETECT_MAX_BYTES

    int fp_detect(const char *buf, size_t len)
