"""Server metrics in the Prometheus text exposition format (no client library needed).

Requests by path and final status (499 when the client went away first), prompt/completion
tokens and target forwards by method (their ratio is the mean accepted tokens per forward),
cancelled generations, a request latency histogram, and the queue depth and running count sampled
when scraped.
"""

from __future__ import annotations

import threading
from collections import Counter

from tokenforge.decoding.engine import GenerationStats

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Thread-safe: updated by the event loop and by the engine's worker thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.prompt_tokens: Counter[str] = Counter()
        self.completion_tokens: Counter[str] = Counter()
        self.target_forwards: Counter[str] = Counter()
        self.cancelled = 0
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.latency_sum = 0.0

    def record_request(self, path: str, status: int) -> None:
        with self._lock:
            self.requests[path, status] += 1

    def record_generation(self, method: str, stats: GenerationStats) -> None:
        with self._lock:
            self.prompt_tokens[method] += stats.prompt_tokens
            self.completion_tokens[method] += stats.new_tokens
            self.target_forwards[method] += stats.target_forwards

    def record_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    def observe_latency(self, seconds: float) -> None:
        with self._lock:
            index = next((i for i, le in enumerate(LATENCY_BUCKETS) if seconds <= le),
                         len(LATENCY_BUCKETS))
            self.latency_counts[index] += 1
            self.latency_sum += seconds

    def render(self, queue_depth: int, running: int) -> str:
        with self._lock:
            lines: list[str] = []
            _family(lines, "requests_total", "counter",
                    "HTTP requests by path and final status code (499: the client went away)",
                    {f'path="{p}",status="{s}"': n for (p, s), n in sorted(self.requests.items())})
            for name, counter, what in (
                ("prompt_tokens_total", self.prompt_tokens, "prompt tokens"),
                ("completion_tokens_total", self.completion_tokens, "tokens generated"),
                ("target_forwards_total", self.target_forwards, "target model forwards"),
            ):
                _family(lines, name, "counter", f"{what} of finished generations, by method",
                        _by_method(counter))
            _family(lines, "mean_accepted_tokens", "gauge",
                    "tokens generated per target forward over all finished generations, by method",
                    _by_method({m: self.completion_tokens[m] / f
                                for m, f in self.target_forwards.items() if f}))
            _family(lines, "generations_cancelled_total", "counter",
                    "generations stopped because their client went away", {"": self.cancelled})
            self._render_latency(lines)
            _family(lines, "queue_depth", "gauge", "requests waiting for the engine",
                    {"": queue_depth})
            _family(lines, "requests_running", "gauge", "generations running now (0 or 1)",
                    {"": running})
        return "\n".join(lines) + "\n"

    def _render_latency(self, lines: list[str]) -> None:
        name = "tokenforge_request_duration_seconds"
        lines += [f"# HELP {name} time from arrival to the last token of generation requests",
                  f"# TYPE {name} histogram"]
        cumulative = 0
        for le, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.latency_counts,
                             strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        lines += [f"{name}_sum {self.latency_sum:.6f}", f"{name}_count {cumulative}"]


def _by_method(values) -> dict[str, float]:
    return {f'method="{method}"': value for method, value in sorted(values.items())}


def _family(lines: list[str], name: str, kind: str, help_text: str,
            samples: dict[str, float]) -> None:
    name = f"tokenforge_{name}"
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples.items():
        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")
