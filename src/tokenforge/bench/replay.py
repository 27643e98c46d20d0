"""Reproducible calibration: each run records what was measured and chosen; a later run replays it.

A run records, in results.json, each method's `calibration` (what its drafter measured and
chose on this machine: token-recycling's tree size and forward costs) and the `cost_curves`
that price the modelled speedup. `BenchConfig.calibration_from` (an earlier results.json) takes
them back:
- a method whose recorded calibration has a `tree_size` gets that `tree_size` option, unless the
  user set one (`--method-option`);
- the recorded cost curves are used instead of measuring (a curve the file lacks is measured).
In a fresh run, a method with a `calibrate` option (token-recycling) gets `calibrate=True` unless
the user set it: its choice is then measured in this run and recorded, rather than read from the
user cache (decoding/costs.py), where an earlier process may have stored a choice made under
other conditions. `MethodPlan.bench_options` keeps the options the benchmark set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenforge.bench.modelled import MeasuredCurve
from tokenforge.decoding.registry import Method
from tokenforge.errors import InvalidOptionError

FIRST_SCHEMA = 2  # results.json files from schema_version 2 on record calibrations


@dataclass
class Replay:
    path: str
    origin: dict  # the replayed run's created, model, draft_model, device_name, dtype
    tree_sizes: dict[str, int]  # method -> recorded tree size
    curves: dict[str, MeasuredCurve]  # "target" / "draft" -> recorded cost curve


def load_replay(path: Path) -> Replay:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InvalidOptionError(f"cannot read the calibration file {path}: {err}") from None
    version = data.get("schema_version", 0) if isinstance(data, dict) else 0
    if not isinstance(version, int) or version < FIRST_SCHEMA:
        raise InvalidOptionError(f"{path} is not a results.json of schema_version "
                                 f"{FIRST_SCHEMA} or later, so it records no calibration")
    try:
        tree_sizes = {name: int(m["calibration"]["tree_size"])
                      for name, m in data["methods"].items()
                      if (m.get("calibration") or {}).get("tree_size") is not None}
        curves = {role: MeasuredCurve.replayed(curve)
                  for role, curve in data["cost_curves"].items() if curve is not None}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise InvalidOptionError(f"{path}: malformed calibration record ({err!r})") from None
    origin = {key: data.get(key) for key in ("created", "model", "draft_model", "device_name",
                                             "dtype")}
    return Replay(str(path), origin, tree_sizes, curves)


def bench_options(spec: Method, given: dict, replay: Replay | None) -> dict:
    """The options the benchmark sets for `spec` on top of the user's (`given`)."""
    declared = spec.options
    recorded = replay.tree_sizes.get(spec.name) if replay is not None else None
    if recorded is not None and "tree_size" in declared and "tree_size" not in given:
        return {"tree_size": str(recorded)}
    if "calibrate" in declared and "calibrate" not in given:
        return {"calibrate": True}
    return {}
