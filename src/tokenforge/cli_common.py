"""What every `tokenforge` command shares: `key=value` options, checks of odd values, the guide
options of `generate` and `bench`, and `run`, which ends a usage mistake, a TokenforgeError or
Ctrl-C in one line on stderr, not a traceback."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from tokenforge.errors import GuideError, TokenforgeError

try:  # recent typer (0.29 here) bundles its own copy of click, with its own exception classes
    from typer._click import exceptions as click_exceptions
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_exceptions

ClickException = click_exceptions.ClickException
UsageError = click_exceptions.UsageError
# click >= 8.2 raises this for a bare command group (no_args_is_help); older click exits itself
NoArgsIsHelpError = getattr(click_exceptions, "NoArgsIsHelpError", ())

PROG = "tokenforge"
USAGE_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what shells report for Ctrl-C; typer exits with it too


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """`key=value` strings -> dict (values are coerced to each option's type later)."""
    options = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise TokenforgeError(f"--option expects key=value, got '{pair}'")
        options[key.strip()] = value.strip()
    return options


def finite(value: float | None) -> float | None:
    """Typer callback: refuse nan and inf, which parse as floats but mean no setting."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def utf8_text(value: str) -> str:
    """Typer callback: refuse text that is not valid UTF-8 (Python keeps such argv bytes as
    lone surrogates, which no tokenizer or terminal can encode)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise typer.BadParameter("the text is not valid UTF-8; pass UTF-8 text (check the "
                                 "terminal's encoding, e.g. LANG=C.UTF-8)") from None
    return value


# The guide options, declared once: `generate` and `bench` take each as
# `name: <Option> = default` and pass the values to `guide_spec` (guides/__init__.py: GuideSpec).
JsonSchemaOption = Annotated[Path | None, typer.Option(
    "--json-schema", metavar="FILE", exists=True, dir_okay=False,
    help="guide: the output is JSON valid under the JSON schema in FILE")]
JsonObjectOption = Annotated[bool, typer.Option(
    "--json-object", help="guide: the output is a JSON object")]
RegexOption = Annotated[str | None, typer.Option(
    "--regex", metavar="TEXT", help="guide: the output matches this regex in full")]
GrammarOption = Annotated[Path | None, typer.Option(
    "--grammar", metavar="FILE.lark", exists=True, dir_okay=False,
    help="guide: the output follows the Lark grammar in FILE (llguidance's dialect)")]
MonitorOption = Annotated[str | None, typer.Option(
    "--monitor", metavar="python", help="guide: only members that exist after `obj.` (python)")]
RepilotOption = Annotated[bool, typer.Option(
    "--repilot", help="guide: Repilot-style completion engine (code that can still parse)")]
DenyVulnerabilitiesOption = Annotated[bool, typer.Option(
    "--deny-vulnerabilities", help="guide: vulnerability-constrained decoding")]


def guide_spec(json_schema: Path | None = None, json_object: bool = False,
               regex: str | None = None, grammar: Path | None = None, monitor: str | None = None,
               repilot: bool = False, deny_vulnerabilities: bool = False):
    """The GuideSpec of the guide options (files read here), or None when none is given. A file
    that cannot be read or a schema that is not JSON is a GuideError; the grammars themselves are
    compiled by `make_guide`, which needs the model's tokenizer."""
    from tokenforge.guides import GuideSpec

    schema = None
    if json_schema is not None:
        text = _read(json_schema, "--json-schema")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as err:
            raise GuideError(f"--json-schema {json_schema} is not valid JSON: {err}") from None
    lark = _read(grammar, "--grammar") if grammar is not None else None
    if regex is not None and not regex:
        raise GuideError("--regex is empty: give a regular expression the output must match")
    spec = GuideSpec(json_schema=schema, json_object=json_object, regex=regex, lark=lark,
                     monitor=monitor, repilot=repilot, deny_vulnerabilities=deny_vulnerabilities)
    return None if spec.empty else spec


def _read(path: Path, option: str) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise GuideError(f"cannot read {option} {path}: {reason}") from None
    if not text.strip():
        raise GuideError(f"{option} {path} is empty")
    return text


def run(app: typer.Typer) -> None:
    """Run `app` on sys.argv. Mistakes exit 2 and Ctrl-C exits 130, each with one line on stderr."""
    try:
        code = app(prog_name=PROG, standalone_mode=False)
    except TokenforgeError as err:
        _fail(str(err), USAGE_EXIT)
    except NoArgsIsHelpError as err:  # the help, on stderr
        err.show()
        raise SystemExit(USAGE_EXIT) from None
    except ClickException as err:
        _fail(_one_line(err), err.exit_code)
    except (KeyboardInterrupt, typer.Abort):  # a Ctrl-C inside a command comes back as the code
        code = INTERRUPTED_EXIT
    if code == INTERRUPTED_EXIT:
        _fail("interrupted (Ctrl-C)", INTERRUPTED_EXIT)
    if isinstance(code, int) and code:  # a typer.Exit(code) from a command
        raise SystemExit(code)


def _one_line(err: ClickException) -> str:
    """click's message on one line; a usage mistake also says where the usage is explained."""
    message = " ".join(err.format_message().split()).rstrip(".")
    message = message[:1].lower() + message[1:]
    if not isinstance(err, UsageError):
        return message
    command = err.ctx.command_path if err.ctx else PROG
    return f"{message} (see `{command} --help`)"


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(code)
