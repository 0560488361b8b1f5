"""atheris harness for fastproxy._native.http1 (csrc/http1.c).

pytest does not collect this file (its name is not test_*.py). Run it with:

    .venv/bin/pip install atheris
    .venv/bin/python tests/fuzz/fuzz_http1.py tests/fuzz/corpus_http1 -max_total_time=600

New inputs that reach new coverage are written into the corpus directory
(pass an empty scratch directory first to keep the seeds unchanged). To see
coverage inside the C as well as the wrapper, build the extension with
clang's fuzzer instrumentation first:

    CC=clang CFLAGS="-fsanitize=fuzzer-no-link,address -g" LDSHARED="clang -shared" \\
        .venv/bin/python setup.py build_ext --inplace --force
    LD_PRELOAD=$(clang -print-file-name=libclang_rt.asan-x86_64.so) \\
        .venv/bin/python tests/fuzz/fuzz_http1.py tests/fuzz/corpus_http1

Without atheris, `fuzz_http1.py --replay FILE_OR_DIR...` runs the inputs once
through the same checks (a smoke test of the corpus).

Input format: the first byte picks the target (mod 4: request head, response
head, chunked body, request head + framing) and a split point; the rest is
the message. Checks, beyond "no crash":
- a head fed in two pieces at the split point, then byte by byte, gives the
  same result (or the same error status and reason) as fed whole;
- offsets stay inside the input and `consumed` is where the head ends;
- a chunked body decodes to the same data, the same length and the same
  error whatever the piece boundaries;
- statuses are only those the C contract lists.
"""
from __future__ import annotations

import os
import sys

# the repository root, for running from a checkout without `pip install -e .`
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

REQUEST_STATUSES = {400, 413, 414, 431, 501, 505}


def _head(parser_cls, parts):
    p = parser_cls()
    buf = b""
    try:
        for part in parts:
            buf += part
            r = p.feed(buf)
            if r is not None:
                return ("ok", r.consumed, repr(r))
        return ("incomplete",)
    except http1.HttpParseError as e:
        return ("error", e.status, e.reason)


def _chunked(parts):
    d = http1.ChunkedDecoder()
    data = []
    used = 0
    try:
        for part in parts:
            n, chunks = d.feed(part)
            used += n
            data += chunks
            if d.done:
                break
        return ("ok", used, b"".join(data), d.done)
    except http1.HttpParseError as e:
        return ("error", e.status, e.reason)


def check_head(kind: str, msg: bytes, split: int) -> None:
    cls = http1.RequestParser if kind == "request" else http1.ResponseParser
    whole = _head(cls, [msg])
    two = _head(cls, [msg[:split], msg[split:]])
    assert whole == two, (msg, split, whole, two)
    if len(msg) <= 2048:
        assert _head(cls, [msg[i:i + 1] for i in range(len(msg))]) == whole, msg
    fn = http1.parse_request if kind == "request" else http1.parse_response
    try:
        r = fn(msg)
    except http1.HttpParseError as e:
        assert whole == ("error", e.status, e.reason), (msg, whole, e)
        assert e.status in (REQUEST_STATUSES if kind == "request" else {502}), e
        return
    if r is None:
        assert whole == ("incomplete",), (msg, whole)
        return
    assert whole[0] == "ok" and whole[1] == r.consumed, (msg, whole, r)
    assert 0 < r.consumed <= len(msg)
    assert msg[r.consumed - 4:r.consumed] == b"\r\n\r\n"
    for name, value in r.headers:
        assert name and name in msg and value in msg
        assert value == value.strip(b" \t")


def check_chunked(msg: bytes, split: int) -> None:
    whole = _chunked([msg])
    assert whole == _chunked([msg[:split], msg[split:]]), (msg, split)
    if len(msg) <= 2048:
        assert whole == _chunked([msg[i:i + 1] for i in range(len(msg))]), msg
    if whole[0] == "error":
        assert whole[1] in (400, 413, 431), whole
    else:
        assert whole[1] <= len(msg) and (whole[3] or whole[1] == len(msg))


def check_framing(msg: bytes) -> None:
    try:
        r = http1.parse_request(msg)
    except http1.HttpParseError:
        return
    if r is None:
        return
    try:
        f = http1.request_framing(r.method, r.version_minor, r.headers)
    except http1.HttpParseError as e:
        assert e.status in REQUEST_STATUSES, e
        return
    assert f.body in (http1.BODY_NONE, http1.BODY_LENGTH, http1.BODY_CHUNKED, http1.BODY_TUNNEL)
    assert (f.body == http1.BODY_LENGTH) == (f.content_length > 0 and r.method != b"CONNECT")
    for tok in f.connection_tokens:
        assert tok and tok in msg


def TestOneInput(data: bytes) -> None:
    if not data:
        return
    mode = data[0] & 3
    msg = data[1:]
    split = (data[0] >> 2) * len(msg) // 63 if msg else 0
    if mode == 0:
        check_head("request", msg, split)
    elif mode == 1:
        check_head("response", msg, split)
    elif mode == 2:
        check_chunked(msg, split)
    else:
        check_framing(msg)


def _replay(paths: list[str]) -> int:
    n = 0
    for path in paths:
        files = ([os.path.join(path, f) for f in sorted(os.listdir(path))]
                 if os.path.isdir(path) else [path])
        for f in files:
            with open(f, "rb") as fh:
                TestOneInput(fh.read())
            n += 1
    print(f"replayed {n} inputs: ok")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--replay"]:
        from fastproxy._native import http1
        sys.exit(_replay(sys.argv[2:]))
    import atheris

    with atheris.instrument_imports():
        from fastproxy._native import http1
    # coverage of this file's checks (the C needs the clang build above)
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
