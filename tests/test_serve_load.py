"""A small run of benchmarks/load_test.py: 8 streaming clients x 2 requests on a live server."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest
from conftest import tiny_model

from tokenforge.serve.app import ServeSettings, create_app
from tokenforge.serve.live import serve_in_thread

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "load_test.py"
PROMPTS = [" ".join(f"w{(i * 7 + j * 3) % 90 + 2}" for j in range(4 + i % 5)) for i in range(16)]


def _load_test_module():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["vanilla", "pld"])
def test_concurrent_streams_are_complete_and_identical_to_lone_runs(method):
    load_test = _load_test_module()
    app = create_app(tiny_model("llama"), ServeSettings(max_tokens_cap=16, max_queue=8))
    with serve_in_thread(app) as url:
        report = asyncio.run(load_test.run_load_test(url, clients=8, requests_per_client=2,
                                                     max_tokens=12, method=method,
                                                     prompts=PROMPTS))
    assert report.completed == 16
    assert report.mismatched == 0
    assert report.ok
    assert report.completion_tokens > 0 and report.p99_latency_s >= report.p50_latency_s
