"""AdmissionReview in, AdmissionReview out: the webhook's logic. Pure.

The API server POSTs an AdmissionReview (admission.k8s.io/v1) whose
request.object is the Pod being created. The answer echoes request.uid and
either allows the pod unchanged, allows it with a base64 JSONPatch that
turns it into the injected pod (manifest.inject_pod), or denies it with a
message (an annotation we cannot use: better a clear refusal at
`kubectl apply` than a pod whose rules silently differ from its annotations).

Pods are allowed unchanged when the request is not a Pod CREATE, when they
are in a namespace Istio never injects (kube-system, kube-public), or when
inject_pod skips them (fastproxy.io/inject: "false", hostNetwork).

Every patch is applied to the request's pod before it is sent, and must
give exactly the injected pod; a mismatch is a bug and fails the request
instead of corrupting a pod.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from . import jsonpatch
from .manifest import InjectError, InjectOptions, describe, inject_pod

API_VERSIONS = ("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
IGNORED_NAMESPACES = ("kube-system", "kube-public")


class AdmissionError(ValueError):
    """The body is not an AdmissionReview we can answer (HTTP 400)."""


@dataclass(frozen=True)
class Outcome:
    """The answer, plus one line for the log."""

    review: dict
    summary: str


def handle(body: bytes, options: InjectOptions) -> Outcome:
    """Parses a request body and answers it; raises AdmissionError."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise AdmissionError(f"body is not JSON: {e}") from None
    return review(doc, options)


def review(doc: Any, options: InjectOptions) -> Outcome:
    if not isinstance(doc, dict) or doc.get("kind") != "AdmissionReview":
        raise AdmissionError("expected kind AdmissionReview")
    api_version = doc.get("apiVersion")
    if api_version not in API_VERSIONS:
        raise AdmissionError(f"unsupported apiVersion {api_version!r} (expected {API_VERSIONS[0]})")
    request = doc.get("request")
    if not isinstance(request, dict):
        raise AdmissionError("request is missing")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise AdmissionError("request.uid is missing")

    def answer(summary: str, **fields: Any) -> Outcome:
        response = {"uid": uid, "allowed": True, **fields}
        return Outcome({"apiVersion": api_version, "kind": "AdmissionReview", "response": response}, summary)

    kind = request.get("kind") if isinstance(request.get("kind"), dict) else {}
    if kind.get("kind") != "Pod" or kind.get("group", "") != "" or request.get("subResource"):
        return answer(f"{uid}: not a Pod, allowed unchanged")
    if request.get("operation", "CREATE") != "CREATE":
        return answer(f"{uid}: {request.get('operation')} of a Pod, allowed unchanged")
    pod = request.get("object")
    if not isinstance(pod, dict):
        raise AdmissionError("request.object is missing")
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), dict) else {}
    namespace = request.get("namespace") or meta.get("namespace") or ""
    where = describe({"kind": "Pod", "metadata": {**meta, "namespace": namespace}})
    if namespace in IGNORED_NAMESPACES:
        return answer(f"{where}: namespace {namespace} is never injected")

    try:
        result = inject_pod(pod, options)
    except InjectError as e:
        message = f"fastproxy injection: {e}"
        return answer(f"{where}: denied: {e}", allowed=False,
                      status={"status": "Failure", "reason": "BadRequest", "code": 400, "message": message})
    if result.skipped:
        return answer(f"{where}: not injected: {result.skipped}")
    patch = jsonpatch.diff(pod, result.pod)
    if not patch:
        return answer(f"{where}: already injected")
    if not jsonpatch.equal(jsonpatch.apply_patch(pod, patch), result.pod):
        raise AssertionError(f"{where}: the JSONPatch does not reproduce the injected pod")
    encoded = base64.b64encode(orjson.dumps(patch)).decode()
    fields: dict[str, Any] = {"patchType": "JSONPatch", "patch": encoded}
    if result.notes:
        fields["warnings"] = list(result.notes)
    return answer(f"{where}: injected ({len(patch)} patch operations)", **fields)


def encode(outcome: Outcome) -> bytes:
    return orjson.dumps(outcome.review)
