"""Observability on the worker side: access logs and span export.

record.py    the engine's request record (field order of /work/stash/obs-spec.md §3), block names
accesslog.py pure: records -> access log lines (Envoy's default text format, or JSON)
sink.py      I/O: the non-blocking, bounded access log writer
spans.py     pure: records -> Zipkin v2 JSON / OTLP/HTTP JSON
exporter.py  I/O: batched span export to the collector
"""
