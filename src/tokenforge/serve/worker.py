"""One engine per process: a worker thread runs generations one at a time from a FIFO queue.

A request becomes a `Job`; the worker sends its events (`Started`, `Delta`, then `Finished`,
`Failed` or `Cancelled`) back to the job's asyncio loop with `call_soon_threadsafe`, into that
job's own queue, so two requests' tokens can never mix. Cancelling a waiting job removes it from
the queue; cancelling the running one makes the engine stop before its next step
(`should_stop`), which ends the generation and frees the engine. The worker thread is the only
one that touches the tokenizer: it encodes prompts, checks their length, builds each
generation's guide (compiling its grammar), and renders tokens and log-probabilities for the
response (`TokenRenderer`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

from tokenforge.decoding.api import encode_prompt, generate, make_drafter
from tokenforge.decoding.registry import get_method
from tokenforge.errors import PromptError, TokenforgeError
from tokenforge.guides import Guide, GuideSpec, make_guide
from tokenforge.models.load import LoadedModel
from tokenforge.serve.formats import Result, TokenRenderer
from tokenforge.serve.metrics import Metrics

log = logging.getLogger("tokenforge.serve")


class QueueFullError(Exception):
    """The queue already holds the configured number of waiting requests."""


@dataclass(frozen=True)
class GenerationRequest:
    """Everything the worker needs to run one generation (validated by the app beforehand)."""

    prompt: str | list[int]
    method: str
    options: dict
    max_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int | None
    stop: list[str] | None
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    echo: bool = False  # the response starts with the prompt (and its logprobs)
    guide: GuideSpec | None = None  # built into a fresh Guide for each generation


@dataclass
class Started:
    """The prompt was accepted and generation began; with echo, the prompt's text."""

    prompt_text: str = ""


@dataclass
class Delta:
    text: str


@dataclass
class Finished:
    result: Result


@dataclass
class Failed:
    error: Exception


@dataclass
class Cancelled:
    """The job was cancelled (its client went away) before it finished."""


Event = Started | Delta | Finished | Failed | Cancelled
FINAL_EVENTS = Finished | Failed | Cancelled


class Job:
    """One queued request; its events are consumed on the loop that created it."""

    def __init__(self, request: GenerationRequest):
        self.request = request
        self.cancelled = threading.Event()
        self.done = False
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Event] = asyncio.Queue()

    def post(self, event: Event) -> None:
        """Called from the worker thread; dropped when the loop is gone (server shutting down)."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:
            self.cancelled.set()

    async def next_event(self) -> Event:
        event = await self._events.get()
        self.done = isinstance(event, FINAL_EVENTS)
        return event


class DrafterCache:
    """Drafters kept across requests, as the benchmark keeps them across prompts: state such as
    Token Recycling's matrix and tree-size measurements carries over. The least recently used of
    more than `size` (method, options) pairs is dropped."""

    def __init__(self, loaded: LoadedModel, draft: LoadedModel | None, size: int = 8):
        self.loaded, self.draft, self.size = loaded, draft, size
        self._drafters: OrderedDict[tuple, object] = OrderedDict()

    def get(self, method: str, options: dict):
        key = (method, tuple(sorted(get_method(method).resolve_options(options).items())))
        if key not in self._drafters:
            self._drafters[key] = make_drafter(self.loaded, method, self.draft, **options)
            if len(self._drafters) > self.size:
                self._drafters.popitem(last=False)
        self._drafters.move_to_end(key)
        return self._drafters[key]


class Worker:
    """Owns the model: the only thread that ever runs it."""

    def __init__(self, loaded: LoadedModel, draft: LoadedModel | None, max_queue: int,
                 metrics: Metrics, max_prompt_tokens: int | None = None):
        self.loaded, self.draft, self.max_queue, self.metrics = loaded, draft, max_queue, metrics
        self.max_prompt_tokens = max_prompt_tokens
        self._drafters = DrafterCache(loaded, draft)
        self._renderer = TokenRenderer(loaded.tokenizer)
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.start()

    @property
    def queue_depth(self) -> int:
        """Requests waiting for the engine (the running one excluded)."""
        return len(self._waiting)

    @property
    def busy(self) -> bool:
        return self._running is not None

    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.max_queue:
                raise QueueFullError(f"the server's queue is full ({self.max_queue} requests "
                                     "waiting); retry later")
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop `job` wherever it is; a no-op for a finished job."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
                self.metrics.record_cancelled()
                job.post(Cancelled())

    def start(self) -> None:
        """Start the engine thread unless it runs (again after `close`, as ASGI lifespans do)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._closed = False
            self._thread = threading.Thread(target=self._serve_forever, name="tokenforge-engine",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the engine thread; the running job and every waiting one end `Cancelled`."""
        with self._cond:
            self._closed = True
            if self._running is not None:
                self._running.cancelled.set()
            while self._waiting:
                job = self._waiting.popleft()
                job.cancelled.set()
                job.post(Cancelled())
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _serve_forever(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._waiting or self._closed)
                if self._closed:
                    return
                self._running = self._waiting.popleft()
            try:
                self._run(self._running)
            finally:
                self._running = None

    def _run(self, job: Job) -> None:
        request = job.request

        if job.cancelled.is_set():  # cancelled between leaving the queue and starting
            self.metrics.record_cancelled()
            job.post(Cancelled())
            return
        try:
            prompt_ids = encode_prompt(self.loaded, request.prompt)
            check_prompt_length(len(prompt_ids), self.max_prompt_tokens)
            drafter = self._drafters.get(request.method, request.options)
            guide = self._guide(request)
            prompt_text = self._prompt_text(request) if request.echo else ""
            job.post(Started(prompt_text))
            generation = generate(
                self.loaded, prompt_ids, method=request.method, draft=self.draft, drafter=drafter,
                max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                top_k=request.top_k, top_p=request.top_p, seed=request.seed, stop=request.stop,
                on_text=lambda text: job.post(Delta(text)), should_stop=job.cancelled.is_set,
                logprobs=request.logprobs, echo=request.echo, guide=guide)
            result = self._renderer.result(generation, prompt_ids, prompt_text)
        except Exception as err:  # reported to the client; the worker lives on
            if not isinstance(err, TokenforgeError):
                log.exception("generation failed")
            job.post(Failed(err))
            return
        if generation.stats.finish_reason == "cancelled":
            self.metrics.record_cancelled()
            job.post(Cancelled())
            return
        self.metrics.record_generation(request.method, generation.stats)
        job.post(Finished(result))

    def _guide(self, request: GenerationRequest) -> Guide | None:
        """A fresh guide for this generation (a guide holds per-generation state); GuideError
        for a bad grammar, raised before `Started` so that even a stream gets a 400. With
        max_new_tokens 0 (echo only scores the prompt) the guide is built, so that the request
        is valid or not whatever max_tokens says, but not used: nothing is generated."""
        if request.guide is None:
            return None
        guide = make_guide(self.loaded, request.guide)
        return guide if request.max_new_tokens > 0 else None

    def _prompt_text(self, request: GenerationRequest) -> str:
        if isinstance(request.prompt, str):
            return request.prompt
        return self.loaded.tokenizer.decode(request.prompt, skip_special_tokens=True)


def check_prompt_length(tokens: int, limit: int | None) -> None:
    """Raise PromptError when a prompt of `tokens` tokens is over the server's limit."""
    if limit is not None and tokens > limit:
        raise PromptError(f"the prompt has {tokens} tokens but this server accepts at most "
                          f"{limit} (max_prompt_tokens); shorten the prompt")
