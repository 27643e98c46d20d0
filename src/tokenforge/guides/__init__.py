"""Guided decoding: constraints every decoder honours (see guides/base.py for the seam).

`make_guide(loaded, GuideSpec(...))` builds the guide a user asked for, AND-ing the parts:
- json_schema / json_object / regex / lark: grammars compiled by llguidance (guides/grammar.py);
- monitor="python": the member monitor of monitor-guided decoding (guides/python_monitor.py);
- repilot=True: the Repilot-style completion engine (guides/repilot.py; it includes the member
  monitor, so monitor="python" adds nothing to it);
- deny_vulnerabilities=True: vulnerability-constrained decoding (guides/vuln.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenforge.errors import GuideError
from tokenforge.guides.base import AllOf, DenyTokens, Guide

__all__ = ["AllOf", "DenyTokens", "Guide", "GuideSpec", "make_guide"]

MONITORS = ("python",)


@dataclass(frozen=True)
class GuideSpec:
    json_schema: dict | str | None = None  # a JSON schema (dict or its JSON text)
    json_object: bool = False  # any JSON object
    regex: str | None = None
    lark: str | None = None  # a Lark grammar (llguidance's dialect)
    monitor: str | None = None  # "python": members after `obj.`
    repilot: bool = False
    deny_vulnerabilities: bool = False

    @property
    def empty(self) -> bool:
        return self == GuideSpec()


def make_guide(loaded, spec: GuideSpec) -> Guide | None:
    """The guide for `spec` on `loaded`'s tokenizer (None when the spec asks for nothing)."""
    parts: list[Guide] = []
    grammars = [(kind, source) for kind, source in (
        ("json_schema", spec.json_schema), ("regex", spec.regex), ("lark", spec.lark))
        if source is not None]
    if spec.json_object:
        grammars.append(("json_object", None))
    if len(grammars) > 1:
        raise GuideError("give one grammar at a time (json_schema, json_object, regex or lark)")
    if grammars:
        from tokenforge.guides.grammar import GrammarGuide

        parts.append(GrammarGuide(loaded.tokenizer, *grammars[0]))
    if spec.monitor is not None and spec.monitor not in MONITORS:
        raise GuideError(f"unknown monitor {spec.monitor!r}; choose one of {', '.join(MONITORS)}")
    if spec.repilot:  # the completion engine is the member monitor plus forced completion
        from tokenforge.guides.repilot import CompletionEngine

        parts.append(CompletionEngine(loaded.tokenizer))
    elif spec.monitor is not None:
        from tokenforge.guides.python_monitor import MemberMonitor

        parts.append(MemberMonitor(loaded.tokenizer))
    if spec.deny_vulnerabilities:
        from tokenforge.guides.vuln import vulnerability_denial

        parts.append(vulnerability_denial(loaded.tokenizer))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else AllOf(*parts)
