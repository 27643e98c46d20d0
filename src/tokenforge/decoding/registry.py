"""Method name -> factory, paper reference and option schema with defaults."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tokenforge.errors import InvalidOptionError


@dataclass
class Option:
    default: object
    help: str
    choices: tuple | None = None


@dataclass
class Method:
    name: str
    paper: str
    summary: str
    factory: Callable[..., object] | None  # (target: LoadedModel, draft: LoadedModel | None, **opts)
    options: dict[str, Option] = field(default_factory=dict)
    needs_draft: bool = False

    def resolve_options(self, given: dict) -> dict:
        unknown = set(given) - set(self.options)
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise InvalidOptionError(f"unknown option(s) {', '.join(sorted(unknown))} for method "
                                     f"'{self.name}'; valid options: {valid}")
        resolved = {}
        for key, option in self.options.items():
            value = coerce(key, given.get(key, option.default), option.default)
            if option.choices and value not in option.choices:
                raise InvalidOptionError(f"option {self.name}.{key} must be one of "
                                         f"{', '.join(map(str, option.choices))}, got {value!r}")
            resolved[key] = value
        return resolved


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
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        return type(default)(value)
    except (TypeError, ValueError):
        kind = {bool: "a boolean", int: "an integer", float: "a number"}.get(type(default), "a string")
        raise InvalidOptionError(f"option '{key}' expects {kind}, got {value!r}") from None


def require_positive(**values) -> None:
    for key, value in values.items():
        if value <= 0:
            raise InvalidOptionError(f"option '{key}' must be positive, got {value}")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    _load_builtin()
    if name not in METHODS:
        raise InvalidOptionError(f"unknown method '{name}'; available: {', '.join(sorted(METHODS))}"
                                 " (see `tokenforge methods`)")
    return METHODS[name]


def all_methods() -> list[Method]:
    _load_builtin()
    return [METHODS[name] for name in sorted(METHODS)]


def _load_builtin() -> None:
    """Import every module of the method packages: each registers its method(s) on import."""
    import importlib
    import pkgutil

    for package in ("drafters", "schedules", "strategies"):
        pkg = importlib.import_module(f"tokenforge.decoding.{package}")
        for info in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


register(Method("vanilla", "-", "plain autoregressive decoding with a KV cache (the reference)",
                factory=None))
