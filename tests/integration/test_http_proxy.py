"""Issue 3, acceptance 3: the HTTP/1.1 path end to end - a real fastproxy
with an explicit HTTP listener in front of real upstreams
(support/http_upstreams.py), driven by http.client and raw sockets.

Here: keep-alive and upstream pooling, pipelining, HTTP/1.0, HEAD/204/304,
and the header rewriting (x-forwarded-*, x-request-id, hop-by-hop removal,
case and order preserved both ways)."""
import hashlib
import http.client
import json
import re
import threading

from tests.support.http_upstreams import (
    HttpUpstream, Reader, connect, exchange, get, parse_head, read_response, start_http_proxy)
from tests.support.payload import stream_sha256
from tests.support.polling import poll_until

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def _proxy(start_proxy, up, **settings):
    return start_http_proxy(start_proxy, {"backend": up.address}, default_cluster="backend", **settings)


def test_keep_alive_requests_reuse_pooled_upstream_connections(start_proxy):
    with HttpUpstream("backend") as up:
        proxy, port, _ = _proxy(start_proxy, up)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 300
        for i in range(n):
            body = f"request {i}".encode()
            conn.request("POST", f"/ka/{i}", body=body, headers={"Host": "svc.local"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            assert resp.status == 200, (i, resp.status, data)
            assert data["target"] == f"/ka/{i}" and data["body"] == body.decode(), data
        conn.close()
        connections, requests = up.snapshot()
    assert requests == n
    # One client connection, one worker: the pool keeps one upstream connection busy.
    assert connections <= 3, f"{connections} upstream connections for {n} keep-alive requests"
    # The client's own connection was kept alive too (http.client reconnects silently otherwise).
    m = poll_until(lambda: (m := proxy.admin.metrics()).value(
        "fastproxy_cluster_upstream_rq_total", cluster_name="backend") == n and m,
        timeout=5, message=f"upstream_rq_total == {n}")
    assert m.value("fastproxy_listener_downstream_cx_total", listener_name="web") == 1
    assert m.value("fastproxy_listener_downstream_rq_total", listener_name="web", response_code_class="2xx") == n
    assert m.value("fastproxy_cluster_upstream_rq_completed_total", cluster_name="backend",
                   response_code_class="2xx") == n
    assert m.value("fastproxy_cluster_upstream_cx_total", cluster_name="backend") == connections
    assert m.value("fastproxy_cluster_upstream_cx_pool_reused_total", cluster_name="backend") >= n - connections


def test_many_keep_alive_clients_share_a_small_pool(start_proxy):
    with HttpUpstream("backend") as up:
        proxy, port, _ = _proxy(start_proxy, up, workers=2)
        errors: list[str] = []
        clients, per_client = 8, 60

        def client(cid):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                for i in range(per_client):
                    conn.request("GET", f"/c{cid}/{i}", headers={"Host": "svc.local"})
                    resp = conn.getresponse()
                    body = resp.read()
                    if resp.status != 200 or f"/c{cid}/{i}".encode() not in body:
                        errors.append(f"client {cid} #{i}: {resp.status} {body[:100]!r}")
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"client {cid}: {exc!r}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        connections, requests = up.snapshot()
    assert not errors, errors[:5]
    assert requests == clients * per_client
    assert connections <= 2 * clients, f"{connections} upstream connections for {requests} requests"


def test_pipelined_requests_are_answered_in_order_byte_exact(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up)
        batch = (b"GET /p/1 HTTP/1.1\r\nHost: svc.local\r\n\r\n"
                 b"POST /p/2 HTTP/1.1\r\nHost: svc.local\r\nContent-Length: 11\r\n\r\nhello world"
                 b"GET /_/stream?n=300000&seed=5 HTTP/1.1\r\nHost: svc.local\r\n\r\n"
                 b"HEAD /_/head HTTP/1.1\r\nHost: svc.local\r\n\r\n"
                 b"POST /p/5 HTTP/1.1\r\nHost: svc.local\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"3\r\nabc\r\n0\r\n\r\n"
                 b"GET /_/chunked?n=70000&seed=6&size=4096 HTTP/1.1\r\nHost: svc.local\r\n\r\n"
                 b"GET /p/7 HTTP/1.1\r\nHost: svc.local\r\nConnection: close\r\n\r\n")
        with connect("127.0.0.1", port) as s:
            s.sendall(batch)       # one send: the proxy gets them in one read
            r = Reader(s)
            got = [read_response(r, m) for m in ("GET", "POST", "GET", "HEAD", "POST", "GET", "GET")]
            tail = r.read_to_eof()
    assert all(x is not None and x.complete for x in got), got
    assert [x.status for x in got] == [200] * 7
    assert got[0].json()["target"] == "/p/1"
    assert got[1].json()["target"] == "/p/2" and got[1].json()["body"] == "hello world"
    assert hashlib.sha256(got[2].body).hexdigest() == stream_sha256(300000, 5)
    assert got[3].body == b"" and got[3].header("content-length") == "1234"
    assert got[4].json()["body"] == "abc"
    assert hashlib.sha256(got[5].body).hexdigest() == stream_sha256(70000, 6)
    assert got[6].json()["target"] == "/p/7"
    assert tail == b"", f"bytes after the last response: {tail[:200]!r}"
    # Upstream saw them in order too.
    assert [rec["target"] for rec in up.records] == [
        "/p/1", "/p/2", "/_/stream?n=300000&seed=5", "/_/head", "/p/5",
        "/_/chunked?n=70000&seed=6&size=4096", "/p/7"]


def test_http10_keep_alive_and_close(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up)
        with connect("127.0.0.1", port) as s:
            r = Reader(s)
            for i in range(3):
                s.sendall(b"GET /h10/%d HTTP/1.0\r\nHost: svc.local\r\nConnection: keep-alive\r\n\r\n" % i)
                resp = read_response(r)
                assert resp is not None and resp.status == 200, resp
                assert resp.json()["target"] == f"/h10/{i}"
                assert (resp.header("connection") or "").lower() == "keep-alive", resp.raw_head
            # Without keep-alive, HTTP/1.0 ends the connection after the response.
            s.sendall(b"GET /h10/last HTTP/1.0\r\nHost: svc.local\r\n\r\n")
            resp = read_response(r)
            assert resp is not None and resp.status == 200 and resp.json()["target"] == "/h10/last"
            assert r.read_to_eof() == b""
        # An HTTP/1.0 request without Host is valid; it still reaches the upstream.
        resp = exchange(port, b"GET /nohost HTTP/1.0\r\n\r\n")
        assert resp is not None and resp.status == 200 and resp.json()["target"] == "/nohost", resp


def test_head_204_304_carry_no_body_on_a_kept_alive_connection(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up)
        with connect("127.0.0.1", port) as s:
            r = Reader(s)
            s.sendall(b"HEAD /_/head HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            head = read_response(r, "HEAD")
            s.sendall(b"GET /_/status?code=204 HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            no_content = read_response(r)
            s.sendall(b"GET /_/status?code=304 HTTP/1.1\r\nHost: svc.local\r\nIf-None-Match: \"v1\"\r\n\r\n")
            not_modified = read_response(r)
            s.sendall(b"HEAD /_/chunked?n=10 HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            head_chunked = read_response(r, "HEAD")
            s.sendall(b"GET /after HTTP/1.1\r\nHost: svc.local\r\n\r\n")
            after = read_response(r)
    assert head.status == 200 and head.body == b"" and head.header("content-length") == "1234", head
    assert no_content.status == 204 and no_content.body == b"", no_content
    assert not_modified.status == 304 and not_modified.body == b"", not_modified
    assert head_chunked.status == 200 and head_chunked.body == b""
    # Had any of them carried a stray body, this response would not parse.
    assert after.status == 200 and after.json()["target"] == "/after", after
    assert up.snapshot()[1] == 5


def _upstream_view(up: HttpUpstream, index: int = -1) -> dict:
    rec = up.records[index]
    _, headers = parse_head(rec["raw_head"].encode("latin-1"))
    rec["pairs"] = [(n.decode(), v.decode()) for n, v in headers]
    return rec


def _values(pairs, name):
    return [v for n, v in pairs if n.lower() == name]


def test_x_forwarded_for_proto_and_request_id(start_proxy):
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up)
        assert get(port, "/plain").status == 200
        plain = _upstream_view(up)
        assert get(port, "/chain", headers={"X-Forwarded-For": "203.0.113.7",
                                            "X-Request-Id": "keep-me-123"}).status == 200
        chained = _upstream_view(up)
        assert get(port, "/again").status == 200
        again = _upstream_view(up)

    xff = _values(plain["pairs"], "x-forwarded-for")
    assert xff == ["127.0.0.1"], plain["raw_head"]
    assert _values(plain["pairs"], "x-forwarded-proto") == ["http"], plain["raw_head"]
    rid = _values(plain["pairs"], "x-request-id")
    assert len(rid) == 1 and UUID4.match(rid[0]), plain["raw_head"]
    assert _values(again["pairs"], "x-request-id")[0] != rid[0], "request ids repeat"

    chain = ",".join(_values(chained["pairs"], "x-forwarded-for"))
    assert [p.strip() for p in chain.split(",")] == ["203.0.113.7", "127.0.0.1"], chained["raw_head"]
    assert _values(chained["pairs"], "x-request-id") == ["keep-me-123"], chained["raw_head"]


HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade",
              "transfer-encoding", "proxy-authenticate", "proxy-authorization"}
PROXY_ADDED = {"x-forwarded-for", "x-forwarded-proto", "x-request-id", "content-length"}


def test_hop_by_hop_headers_go_and_case_and_order_stay(start_proxy):
    sent = [("Host", "svc.local"), ("X-Zeta", "1"), ("x-alpha", "2"), ("X-MiXeD-CaSe", "three"),
            ("Keep-Alive", "timeout=5"), ("Connection", "keep-alive, X-Drop-Me"), ("X-Drop-Me", "secret"),
            ("TE", "trailers"), ("Proxy-Connection", "keep-alive"), ("accept", "*/*"),
            ("X-Dup", "a"), ("X-Dup", "b"), ("COOKIE", "k=v")]
    path = ("/hop?rh=X-Resp-B:1&rh=x-resp-a:2&rh=Keep-Alive:timeout%3D9"
            "&rh=Connection:X-Resp-Hop&rh=X-Resp-Hop:bye&rh=X-RESP-Z:3")
    request = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent) + "\r\n"
    with HttpUpstream("backend") as up:
        _, port, _ = _proxy(start_proxy, up)
        with connect("127.0.0.1", port) as s:
            s.sendall(request.encode())
            resp = read_response(Reader(s))
        view = _upstream_view(up)

    got = [(n, v) for n, v in view["pairs"] if n.lower() not in PROXY_ADDED]
    names_lower = {n.lower() for n, _ in view["pairs"]}
    assert not names_lower & (HOP_BY_HOP - {"connection"}) and "x-drop-me" not in names_lower, view["raw_head"]
    for v in _values(view["pairs"], "connection"):
        assert {t.strip().lower() for t in v.split(",")} <= {"keep-alive", "close"}, view["raw_head"]
    expected = [(k, v) for k, v in sent if k.lower() not in HOP_BY_HOP and k.lower() != "x-drop-me"]
    assert [p for p in got if p[0].lower() != "connection"] == expected, view["raw_head"]

    assert resp.status == 200
    resp_pairs = [(n.decode(), v.decode()) for n, v in resp.headers]
    resp_names = [n for n, _ in resp_pairs]
    assert "X-Resp-B" in resp_names and "x-resp-a" in resp_names and "X-RESP-Z" in resp_names, resp.raw_head
    order = [n for n in resp_names if n.lower().startswith("x-resp-") or n.lower().startswith("x-upstream")]
    assert order == ["X-Upstream", "X-Upstream-Conn", "X-Resp-B", "x-resp-a", "X-RESP-Z"], resp.raw_head
    lowered = {n.lower() for n in resp_names}
    assert "keep-alive" not in lowered and "x-resp-hop" not in lowered, resp.raw_head
