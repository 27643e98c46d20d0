"""Load test for `tokenforge serve`: N concurrent streaming clients x M requests each, greedy.

Every request is first served alone (one at a time), then all clients stream theirs concurrently;
the test checks that every response completes and is token-identical to its lone run, and prints
p50/p99 latency, p50 time to first token and the total tokens/s of the concurrent phase.

    python benchmarks/load_test.py --model demo                   # starts `tokenforge serve` itself
    python benchmarks/load_test.py --url http://127.0.0.1:8000    # a server that is already running

Exits 1 when a response is incomplete or differs from its lone run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import httpx
import numpy as np
from openai import AsyncOpenAI

PROMPTS = [
    "def fibonacci(n):\n", "import os\nimport sys\n\n", "class Stack:\n    def __init__(self):\n",
    "def read_config(path):\n    with open(path) as f:\n", "for i in range(10):\n",
    "    def __repr__(self):\n        return ", "if __name__ == '__main__':\n",
    "def parse_args(argv=None):\n", "try:\n    import json\nexcept ImportError:\n",
    "    @property\n    def name(self):\n", "def merge(left, right):\n    result = []\n",
    "class Error(Exception):\n", "    raise ValueError(", "def main():\n    parser = ",
    "with open(filename, 'rb') as fp:\n", "    return self._", "def __eq__(self, other):\n",
    "from collections import", "    if not isinstance(", "def test_", "# Copyright",
    "    def close(self):\n", "lines = text.splitlines()\n", "def quote(s):\n    \"\"\"",
]


@dataclass
class Result:
    prompt: str
    text: str
    token_ids: list[int] | None  # from the final chunk; None if the stream never finished
    latency_s: float
    ttft_s: float


@dataclass
class LoadReport:
    clients: int
    requests_per_client: int
    completed: int
    mismatched: int
    p50_latency_s: float
    p99_latency_s: float
    p50_ttft_s: float
    completion_tokens: int
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s else 0.0

    @property
    def ok(self) -> bool:
        return (self.completed == self.clients * self.requests_per_client
                and self.mismatched == 0)

    def summary(self) -> str:
        total = self.clients * self.requests_per_client
        return (f"{self.clients} clients x {self.requests_per_client} requests: "
                f"{self.completed}/{total} completed, "
                f"{self.mismatched} differ from their lone run\n"
                f"latency p50 {self.p50_latency_s:.2f} s, p99 {self.p99_latency_s:.2f} s; "
                f"time to first token p50 {self.p50_ttft_s:.2f} s\n"
                f"{self.completion_tokens} tokens in {self.wall_s:.1f} s: "
                f"{self.tokens_per_s:.1f} tokens/s")


async def stream_one(client: AsyncOpenAI, model: str, prompt: str, max_tokens: int,
                     extra_body: dict) -> Result:
    start = time.perf_counter()
    ttft, parts, token_ids = None, [], None
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens,
                                             temperature=0, stream=True, extra_body=extra_body)
    async for chunk in stream:
        choice = chunk.choices[0]
        if choice.text and ttft is None:
            ttft = time.perf_counter() - start
        parts.append(choice.text)
        if choice.finish_reason:
            token_ids = choice.token_ids
    latency = time.perf_counter() - start
    return Result(prompt, "".join(parts), token_ids, latency, latency if ttft is None else ttft)


async def run_load_test(base_url: str, clients: int = 50, requests_per_client: int = 3,
                        max_tokens: int = 32, method: str | None = None,
                        prompts: list[str] | None = None, api_key: str = "none") -> LoadReport:
    prompts = prompts or PROMPTS
    extra_body = {"tokenforge": {"method": method}} if method else {}
    client = AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=3600)
    model = (await client.models.list()).data[0].id
    plan = [[prompts[(c * requests_per_client + r) % len(prompts)]
             for r in range(requests_per_client)] for c in range(clients)]

    alone = {}
    for prompt in dict.fromkeys(p for row in plan for p in row):  # one at a time
        alone[prompt] = await stream_one(client, model, prompt, max_tokens, extra_body)

    async def one_client(row: list[str]) -> list[Result]:
        return [await stream_one(client, model, prompt, max_tokens, extra_body) for prompt in row]

    start = time.perf_counter()
    results = [r for rows in await asyncio.gather(*map(one_client, plan)) for r in rows]
    wall = time.perf_counter() - start
    await client.close()

    done = [r for r in results if r.token_ids is not None]
    latencies = [r.latency_s for r in results]
    return LoadReport(
        clients=clients, requests_per_client=requests_per_client, completed=len(done),
        mismatched=sum((r.token_ids, r.text) != (alone[r.prompt].token_ids, alone[r.prompt].text)
                       for r in results),
        p50_latency_s=float(np.percentile(latencies, 50)),
        p99_latency_s=float(np.percentile(latencies, 99)),
        p50_ttft_s=float(np.percentile([r.ttft_s for r in results], 50)),
        completion_tokens=sum(len(r.token_ids) for r in done), wall_s=wall)


@contextmanager
def spawned_server(args: argparse.Namespace) -> Iterator[str]:
    """`tokenforge serve` in a child process on a free loopback port, until the block ends."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-c", "from tokenforge.cli import main; main()", "serve",
               "--model", args.model, "--port", str(port), "--max-queue", str(args.clients),
               "--max-tokens-cap", str(args.max_tokens), "--device", args.device,
               "--log-level", "warning"]
    if args.draft_model:
        command += ["--draft-model", args.draft_model]
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start: {' '.join(command)}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="an already running server (else one is started)")
    parser.add_argument("--model", default="demo", help="model to serve when --url is not given")
    parser.add_argument("--draft-model", help="draft model to serve, for draft-model methods")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", help="decoding method per request (default: the server's)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--api-key", default="none")
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args()

    def run(url: str) -> LoadReport:
        return asyncio.run(run_load_test(url, args.clients, args.requests, args.max_tokens,
                                         args.method, api_key=args.api_key))

    if args.url:
        report = run(args.url)
    else:
        with spawned_server(args) as url:
            report = run(url)
    print(report.summary())
    if args.json:
        with open(args.json, "w") as out:
            json.dump({**asdict(report), "tokens_per_s": report.tokens_per_s}, out, indent=2)
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
