"""What every `tokenforge` command shares: `key=value` options, checks of odd values, and `run`,
which ends a usage mistake, a TokenforgeError or Ctrl-C in one line on stderr, not a traceback."""

from __future__ import annotations

import math
from typing import NoReturn

import typer

from tokenforge.errors import TokenforgeError

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
