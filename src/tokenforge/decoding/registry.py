"""Method name -> drafter, paper reference and options.

A method's options are declared once, as a dataclass whose fields carry their help text
(`option(default, help)`); its `__post_init__` validates them. `Method.parse` turns user input
(keyword arguments, or `key=value` strings from the CLI) into that dataclass, typed by each
field's default, and `Method.build(target, draft, options)` makes the drafter. Registering a
name twice is an error. The built-in methods register themselves when their module under
`drafters/` or `schedules/` is imported (`_load_builtin`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from tokenforge.errors import InvalidOptionError


@dataclass(frozen=True)
class Option:
    default: object
    help: str
    choices: tuple | None = None


def option(default, help: str, choices: tuple | None = None):
    """A field of an options dataclass: its default, its help text, its allowed values."""
    return field(default=default, metadata={"option": Option(default, help, choices)})


@dataclass(frozen=True)
class NoOptions:
    pass


@dataclass
class Method:
    name: str
    paper: str
    summary: str
    build: Callable[..., object] | None  # (target: LoadedModel, draft: LoadedModel | None, opts)
    options_type: type = NoOptions
    needs_draft: bool = False

    @property
    def options(self) -> dict[str, Option]:
        return {f.name: f.metadata["option"] for f in dataclasses.fields(self.options_type)}

    def parse(self, given: dict):
        """The options dataclass for `given` (missing keys take their defaults)."""
        return parse_options(self.options_type, self.name, given)

    def resolve_options(self, given: dict) -> dict:
        """The validated options as a plain dict (for results files and cache keys)."""
        return dataclasses.asdict(self.parse(given))


def parse_options(options_type: type, name: str, given: dict):
    """An options dataclass (fields declared with `option`) from `given`: CLI strings are
    coerced to each default's type, unknown keys and bad values refused with one clear line."""
    declared = {f.name: f.metadata["option"] for f in dataclasses.fields(options_type)}
    unknown = set(given) - set(declared)
    if unknown:
        valid = ", ".join(sorted(declared)) or "none"
        raise InvalidOptionError(f"unknown option(s) {', '.join(sorted(unknown))} for method "
                                 f"'{name}'; valid options: {valid}")
    values = {}
    for key, spec in declared.items():
        value = coerce(key, given.get(key, spec.default), spec.default)
        if spec.choices and value not in spec.choices:
            raise InvalidOptionError(f"option {name}.{key} must be one of "
                                     f"{', '.join(map(str, spec.choices))}, got {value!r}")
        values[key] = value
    try:
        return options_type(**values)
    except (TypeError, ValueError) as err:
        if isinstance(err, InvalidOptionError):
            raise
        raise InvalidOptionError(f"{name}: {err}") from None


def coerce(key: str, value, default):
    """Convert CLI strings (`key=value`) to the default's type; reject wrong types clearly."""
    kind = type(default)
    if default is None or (isinstance(value, kind) and isinstance(value, bool) == (kind is bool)):
        return value
    try:
        if isinstance(default, bool):
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return type(default)(value)
    except (TypeError, ValueError):
        kind = {bool: "a boolean", int: "an integer", float: "a number"}.get(type(default), "a string")
        raise InvalidOptionError(f"option '{key}' expects {kind}, got {value!r}") from None


def require_positive(**values) -> None:
    for key, value in values.items():
        if value <= 0:
            raise InvalidOptionError(f"option '{key}' must be positive, got {value}")


class Registry:
    """Every decoding method by name; built-in methods are imported on first use."""

    def __init__(self, packages: tuple[str, ...], family: str):
        self.packages, self.family = packages, family
        self.methods: dict[str, Method] = {}
        self._loaded = False

    def register(self, method: Method) -> Method:
        if method.name in self.methods:
            raise ValueError(f"a {self.family} method named '{method.name}' is already registered")
        self.methods[method.name] = method
        return method

    def get(self, name: str) -> Method:
        self._load_builtin()
        if name not in self.methods:
            raise InvalidOptionError(f"unknown method '{name}'; available: "
                                     f"{', '.join(sorted(self.methods))} (see `tokenforge methods`)")
        return self.methods[name]

    def all(self) -> list[Method]:
        self._load_builtin()
        return [self.methods[name] for name in sorted(self.methods)]

    def _load_builtin(self) -> None:
        """Import every module of the method packages: each registers its method(s)."""
        if self._loaded:
            return
        self._loaded = True
        import importlib
        import pkgutil

        for package in self.packages:
            pkg = importlib.import_module(package)
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{pkg.__name__}.{info.name}")


REGISTRY = Registry(("tokenforge.decoding.drafters", "tokenforge.decoding.schedules"),
                    "decoding")
register = REGISTRY.register
get_method = REGISTRY.get
all_methods = REGISTRY.all

register(Method("vanilla", "-", "plain autoregressive decoding with a KV cache (the reference)",
                build=None))
