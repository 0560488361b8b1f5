"""Stats: metric names and slot layout (names.py), Prometheus rendering (prometheus.py)."""
