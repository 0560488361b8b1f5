"""`fastproxy webhook` as a real process over real TLS.

A self-signed certificate (openssl CLI) is made per test module; the client
verifies it, hostname included. Each AdmissionReview's patch is applied to
the pod that was sent, and must equal what `fastproxy inject` prints for the
same pod. The server is stopped by PID with SIGTERM and must exit 0.
"""
import base64
import copy
import http.client
import json
import os
import shutil
import signal
import ssl
import subprocess
from pathlib import Path

import pytest

from fastproxy.inject import jsonpatch, manifest
from tests.support.polling import poll_until
from tests.support.ports import free_port
from tests.support.proxy_process import REPO_ROOT, fastproxy_cmd, hermetic_env, run_cli

IMAGE = "fastproxy:test"
HOST = "127.0.0.1"

# A pod as the API server hands it to mutating admission: defaults filled
# in, generateName instead of a name, no uid yet.
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "web-7d9f8b6c5-",
        "namespace": "shop",
        "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5"},
        "annotations": {"fastproxy.io/exclude-inbound-ports": "9000"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9f8b6c5",
                             "uid": "5b7c2f1e-0000-4000-8000-000000000001", "controller": True,
                             "blockOwnerDeletion": True}],
    },
    "spec": {
        "containers": [{
            "name": "web", "image": "example.com/web:2.3",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "resources": {}, "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent",
        }],
        "initContainers": [{"name": "migrate", "image": "example.com/web:2.3", "args": ["migrate"],
                            "resources": {}, "imagePullPolicy": "IfNotPresent"}],
        "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "web", "securityContext": {}, "schedulerName": "default-scheduler",
        "enableServiceLinks": True, "priority": 0,
    },
    "status": {},
}


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=IP:{HOST}"],
        check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed; it makes the test certificates")
    directory = tmp_path_factory.mktemp("webhook-certs")
    return directory, make_cert(directory, "first"), make_cert(directory, "second")


class Webhook:
    def __init__(self, cert: Path, key: Path, stderr_path: Path, *extra: str):
        self.port = free_port(HOST)
        self.cert, self.key = cert, key
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        self.proc = subprocess.Popen(
            fastproxy_cmd("webhook", "--address", HOST, "--port", str(self.port), "--cert", str(cert),
                          "--key", str(key), "--image", IMAGE, *extra),
            cwd=REPO_ROOT, env=hermetic_env(), stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=self._stderr)

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def context(self, cafile: Path | None = None) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(cafile or self.cert))

    def connect(self, cafile: Path | None = None) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(HOST, self.port, context=self.context(cafile), timeout=10)

    def wait_healthy(self) -> None:
        def healthy():
            assert self.proc.poll() is None, f"webhook exited with {self.proc.returncode}:\n{self.stderr()}"
            conn = self.connect()
            try:
                conn.request("GET", "/healthz")
                response = conn.getresponse()
                return response.status == 200 and response.read() == b"ok\n"
            finally:
                conn.close()

        poll_until(healthy, timeout=15, interval=0.05, message="the webhook's /healthz")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        finally:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            self._stderr.close()


@pytest.fixture(scope="module")
def cli_has_webhook():
    out = run_cli("--help")
    if "webhook" not in out.stdout or "inject" not in out.stdout:
        pytest.fail("fastproxy/cli.py does not register `inject` and `webhook` yet: add "
                    "`from .inject.cli import add_parsers as add_inject_parsers` and "
                    "`add_inject_parsers(sub)` to build_parser()", pytrace=False)


@pytest.fixture
def webhook(certs, cli_has_webhook, tmp_path):
    directory, (cert, key), _ = certs
    # The server reloads its files when they change: give each test its own copies.
    own_cert, own_key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(cert, own_cert)
    shutil.copy(key, own_key)
    server = Webhook(own_cert, own_key, tmp_path / "webhook.stderr")
    try:
        server.wait_healthy()
        yield server
    finally:
        rc = server.stop()
    assert rc == 0, f"webhook exited with {rc} after SIGTERM:\n{server.stderr_path.read_text()}"


def review(pod: dict, uid: str = "705ab4f5-6393-11e8-b7cc-42010a800002") -> bytes:
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
                    "namespace": pod["metadata"].get("namespace", "default"), "operation": "CREATE",
                    "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                    "object": pod, "oldObject": None, "dryRun": False,
                    "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}},
    }).encode()


def post(conn: http.client.HTTPSConnection, body: bytes, content_type: str = "application/json"):
    conn.request("POST", "/inject?timeout=10s", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, response.read()


def inject_cli(pod: dict, tmp_path: Path, *extra: str) -> dict:
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(pod))
    out = run_cli("inject", "-f", str(path), "--image", IMAGE, *extra)
    assert out.returncode == 0, out.stderr
    return manifest.load_yaml(out.stdout)


def pod_variant(annotations: dict | None = None) -> dict:
    pod = copy.deepcopy(POD)
    if annotations is not None:
        pod["metadata"]["annotations"] = annotations
    return pod


@pytest.mark.parametrize("annotations", [
    None,
    {},
    {"fastproxy.io/native-sidecar": "true", "fastproxy.io/include-outbound-ip-ranges": "10.0.0.0/8"},
    {"fastproxy.io/interception-mode": "TPROXY", "fastproxy.io/proxy-cpu-limit": "3",
     "fastproxy.io/log-level": "debug", "fastproxy.io/exclude-outbound-ports": "5432"},
], ids=["exclude-inbound", "no-annotations", "native", "tproxy-resources-settings"])
def test_patched_pod_equals_inject_output(webhook, tmp_path, annotations):
    pod = pod_variant(annotations)
    conn = webhook.connect()
    try:
        status, body = post(conn, review(pod))
    finally:
        conn.close()
    assert status == 200, body
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1" and answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"], validate=True))
    assert isinstance(patch, list) and patch
    patched = jsonpatch.apply_patch(pod, patch)
    assert patched == inject_cli(pod, tmp_path)
    assert patched["status"] == {} and patched["metadata"]["ownerReferences"] == POD["metadata"]["ownerReferences"]


def test_keep_alive_connection_serves_several_reviews(webhook):
    conn = webhook.connect()
    try:
        for n in range(3):
            status, body = post(conn, review(pod_variant(), uid=f"uid-{n}"))
            assert status == 200
            assert json.loads(body)["response"]["uid"] == f"uid-{n}"
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
    finally:
        conn.close()


def test_skipped_pod_is_allowed_without_a_patch(webhook):
    conn = webhook.connect()
    try:
        status, body = post(conn, review(pod_variant({"fastproxy.io/inject": "false"})))
    finally:
        conn.close()
    assert status == 200
    assert json.loads(body)["response"] == {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": True}


def test_bad_annotation_is_denied_with_its_name(webhook):
    conn = webhook.connect()
    try:
        status, body = post(conn, review(pod_variant({"fastproxy.io/exclude-inbound-ports": "ssh"})))
    finally:
        conn.close()
    assert status == 200
    response = json.loads(body)["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 400
    assert "fastproxy.io/exclude-inbound-ports" in response["status"]["message"]


@pytest.mark.parametrize("method,path,body,headers,status", [
    ("GET", "/inject", None, {}, 404),
    ("POST", "/mutate", b"{}", {"Content-Type": "application/json"}, 404),
    ("POST", "/inject", b"{}", {"Content-Type": "text/plain"}, 415),
    ("POST", "/inject", b"{}", {"Content-Type": "application/json"}, 400),
    ("POST", "/inject", b"[", {"Content-Type": "application/json"}, 400),
    ("POST", "/inject", None, {"Content-Type": "application/json", "Content-Length": str(64 << 20)}, 413),
])
def test_bad_requests(webhook, method, path, body, headers, status):
    conn = webhook.connect()
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        assert response.status == status
    finally:
        conn.close()


def test_untrusted_client_handshake_does_not_stop_the_server(webhook, certs):
    _, _, (other_cert, _) = certs
    conn = webhook.connect(cafile=other_cert)  # does not trust the server's certificate
    with pytest.raises(ssl.SSLCertVerificationError):
        conn.request("GET", "/healthz")
    conn.close()
    webhook.wait_healthy()


def test_rotated_certificate_is_served_to_new_connections(webhook, certs):
    _, _, (second_cert, second_key) = certs
    with pytest.raises(ssl.SSLCertVerificationError):
        webhook.connect(cafile=second_cert).request("GET", "/healthz")
    # Replace both files the way a mounted Secret changes: new files renamed into place.
    for source, target in ((second_cert, webhook.cert), (second_key, webhook.key)):
        tmp = target.with_suffix(".new")
        shutil.copy(source, tmp)
        os.replace(tmp, target)

    def serves_second():
        conn = webhook.connect(cafile=second_cert)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        finally:
            conn.close()

    poll_until(serves_second, timeout=10, message="the rotated certificate")
