"""Prometheus text from /stats/prometheus, parsed with prometheus_client.

Samples are kept by their exposed name (counters keep `_total`), so tests
name series exactly as the contract does.
"""
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict
    value: float


class Metrics:
    def __init__(self, text: str):
        self.text = text
        self.samples: list[Sample] = []
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples.append(Sample(s.name, dict(s.labels), s.value))

    def matching(self, name: str, **labels: str) -> list[Sample]:
        return [s for s in self.samples
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples that match; KeyError when no series matches, so a
        misspelt or missing series never reads as a silent 0."""
        found = self.matching(name, **labels)
        if not found:
            known = sorted({s.name for s in self.samples if s.name.startswith(name.split("_total")[0][:24])})
            raise KeyError(f"no sample {name}{labels or ''}; similar series: {known[:20]}")
        return sum(s.value for s in found)

    def value_or_zero(self, name: str, **labels: str) -> float:
        """For baselines only: a series that does not exist yet counts as 0."""
        return sum(s.value for s in self.matching(name, **labels))
