"""Kubernetes injection: `fastproxy inject` (manifests) and `fastproxy webhook`.

    annotations.py  the fastproxy.io/* pod annotations, declared once (pure)
    manifest.py     inject a pod / workload / YAML stream: dict in, dict out (pure)
    jsonpatch.py    RFC 6902 diff and apply (pure)
    admission.py    AdmissionReview in, AdmissionReview + JSONPatch out (pure)
    webhook.py      the TLS server around admission.py (I/O)
    cli.py          the two subcommands
"""
from .manifest import InjectError, InjectOptions, PodInjection, inject_object, inject_pod, inject_yaml

__all__ = ["InjectError", "InjectOptions", "PodInjection", "inject_object", "inject_pod", "inject_yaml"]
