"""`tokenforge serve`: load a model and serve it over the OpenAI-compatible API."""

from __future__ import annotations

import ipaddress
from typing import Annotated

import typer

from tokenforge.cli_common import parse_options
from tokenforge.serve import MAX_BODY_BYTES


def register(app: typer.Typer) -> None:
    app.command()(serve)


def serve(
    model: str = typer.Option("demo", help="demo, a local directory or a hub id"),
    draft_model: str = typer.Option(None, help="draft model, for the draft-model methods"),
    method: str = typer.Option("token-recycling",
                               help="decoding method for requests that name none"),
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="option of --method, key=value (repeatable)")] = None,
    host: str = typer.Option("127.0.0.1", help="address to bind (loopback by default)"),
    port: int = typer.Option(8000, min=1, max=65535, help="port to bind"),
    api_key: str = typer.Option(None, envvar="TOKENFORGE_API_KEY", show_default=False,
                                help="require 'Authorization: Bearer KEY' on /v1/"),
    max_tokens_cap: int = typer.Option(512, min=1, help="largest max_tokens a request may ask"),
    max_queue: int = typer.Option(128, min=0,
                                  help="requests that may wait for the engine; more get 429"),
    max_body_bytes: int = typer.Option(MAX_BODY_BYTES, min=1,
                                       help="a larger request body gets 413, unread"),
    max_prompt_tokens: int = typer.Option(None, min=1, show_default=False,
                                          help="a longer prompt gets 400 (default: the context)"),
    device: str = typer.Option("auto", help="auto, cpu, cuda"),
    dtype: str = typer.Option("auto", help="auto, float32, bfloat16, float16"),
    trust_remote_code: bool = typer.Option(False, help="run the model repo's own code"),
    log_level: str = typer.Option("info", help="uvicorn log level"),
):
    """Serve MODEL over an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions)."""
    import uvicorn

    from tokenforge import load_model
    from tokenforge.serve.app import ServeSettings, create_app

    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    draft = load_model(draft_model, device=device, dtype=dtype,
                       trust_remote_code=trust_remote_code) if draft_model else None
    settings = ServeSettings(method=method, options=parse_options(option), api_key=api_key,
                             max_tokens_cap=max_tokens_cap, max_queue=max_queue,
                             max_body_bytes=max_body_bytes, max_prompt_tokens=max_prompt_tokens)
    app = create_app(loaded, settings, draft=draft)
    if not api_key and not _is_loopback(host):
        typer.echo(f"warning: serving on {host} without an API key; anyone who can reach this "
                   "address can use the model (set --api-key or TOKENFORGE_API_KEY)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
