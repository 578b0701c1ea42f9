"""Search spaces: Ray Tune's vocabulary over dotted config keys, checked before any trial starts.

A space file maps config fields to a Tune domain, or to a plain value every trial uses:

    algo.kl_coef: {loguniform: [0.001, 0.1]}
    learner.lr: {choice: [0.001, 0.003]}
    rollout.n_samples: {grid_search: [2, 4]}
    train.steps: 6

Keys may also nest by section (`algo: {kl_coef: {loguniform: [...]}}`). Bounds follow Tune:
randint and lograndint exclude the upper bound; qrandint and qlograndint include it when q > 1.
"""

from __future__ import annotations

import copy
import difflib
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rlhf.config.tree import Config, field_docs, from_dict
from rlhf.config.typed_yaml import (
    ConfigError,
    get_dotted,
    to_dict,
    yaml_load,  # the config loader's YAML 1.2 scalars: 1e-3 is a float
)

FLOAT_DOMAINS = {"uniform": 2, "quniform": 3, "loguniform": 2, "qloguniform": 3, "randn": 2, "qrandn": 3}
INT_DOMAINS = {"randint": 2, "qrandint": 3, "lograndint": 2, "qlograndint": 3}
LIST_DOMAINS = ("choice", "grid_search")
DOMAINS = (*FLOAT_DOMAINS, *INT_DOMAINS, *LIST_DOMAINS)
FIXED = "value"  # the kind of a plain value in the space file
MAX_VARIANTS = 4096  # discrete combinations checked one by one before falling back to one key at a time


class SpaceError(ConfigError):
    """A search space that cannot work; the message names the key."""


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) config field."""

    key: str
    kind: str  # a name from DOMAINS, or FIXED
    args: tuple

    def candidates(self) -> list:
        """Values worth checking against the config: every listed value, or a range's ends."""
        if self.kind == FIXED:
            return [self.args[0]]
        if self.kind in LIST_DOMAINS:
            return list(self.args)
        if self.kind in ("randn", "qrandn"):
            return [self.args[0]]
        lo, hi = self.args[0], self.args[1]
        exclusive = self.kind in ("randint", "lograndint") or (self.kind in INT_DOMAINS and self.args[2] == 1)
        return [lo, hi - 1 if exclusive else hi]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == FIXED:
            return self.args[0]
        if self.kind in LIST_DOMAINS:
            return getattr(tune, self.kind)(list(self.args))
        return getattr(tune, self.kind)(*self.args)


Space = dict[str, Param]


def load_space(path: str | Path, cfg: Config) -> Space:
    """Read and check a space file against `cfg`; every error names the key at fault."""
    p = Path(path)
    if not p.is_file():
        raise SpaceError(f"search space file not found: {p}")
    try:
        tree = yaml_load(p.read_text())
    except yaml.YAMLError as exc:
        raise SpaceError(f"{p}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict) or not tree:
        raise SpaceError(f"{p}: expected a mapping of dotted config keys to Tune domains")
    return parse_space(tree, cfg, source=p.name)


@functools.cache
def _leaves() -> dict[str, str]:
    return field_docs()  # reads the config's source: worth doing once


def parse_space(tree: dict, cfg: Config, source: str = "space") -> Space:
    leaves = _leaves()
    space = {key: parse_param(key, spec, source) for key, spec in _flatten(tree, leaves, source).items()}
    check_values(space, cfg)
    return space


def _flatten(tree: dict, leaves: dict, source: str, prefix: str = "") -> dict[str, Any]:
    """Nested sections -> dotted keys; a key that is neither a field nor a section is an error."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if dotted in leaves:
            out[dotted] = value
        elif isinstance(value, dict) and any(leaf.startswith(dotted + ".") for leaf in leaves):
            out.update(_flatten(value, leaves, source, dotted + "."))
        else:
            raise SpaceError(_unknown(dotted, leaves, source))
    for dotted in out:
        if dotted.startswith("tune."):
            raise SpaceError(f"{source}: '{dotted}' configures the sweep itself and cannot be searched")
    return out


def _unknown(dotted: str, leaves: dict, source: str) -> str:
    sections = {leaf.rsplit(".", i)[0] for leaf in leaves for i in range(1, leaf.count(".") + 1)}
    if dotted in sections:
        fields = [leaf for leaf in leaves if leaf.startswith(dotted + ".")]
        return f"{source}: '{dotted}' is a section, not a field; search one of its fields, e.g. '{fields[0]}'"
    close = difflib.get_close_matches(dotted, [*leaves, *sections], n=1, cutoff=0.0)
    return (f"{source}: '{dotted}' is not a config field; did you mean '{close[0]}'? "
            "(`rlhf config show --docs` lists every field)")


def parse_param(key: str, spec: Any, source: str = "space") -> Param:
    """`{loguniform: [1e-3, 1e-1]}` -> Param; a plain value -> a fixed Param."""
    field_type = type(get_dotted(Config(), key))
    where = f"{source}: {key}"
    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in DOMAINS):
        if isinstance(spec, dict) and field_type is not dict:
            names = [str(k) for k in spec]
            close = difflib.get_close_matches(names[0], DOMAINS, n=1, cutoff=0.6) if len(names) == 1 else []
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise SpaceError(f"{where}: expected one Tune domain ({', '.join(DOMAINS)}) or a plain value, "
                             f"got {spec!r}{hint}")
        return Param(key, FIXED, (spec,))
    kind, args = next(iter(spec.items()))
    if kind in LIST_DOMAINS:
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{where}: {kind} needs a non-empty list of values, got {args!r}")
        return Param(key, kind, tuple(args))
    return Param(key, kind, _range_args(where, kind, args, field_type))


def _range_args(where: str, kind: str, args: Any, field_type: type) -> tuple:
    count = {**FLOAT_DOMAINS, **INT_DOMAINS}[kind]
    if field_type not in (int, float):
        raise SpaceError(f"{where} is a {field_type.__name__} field; use choice or grid_search")
    if field_type is int and kind in FLOAT_DOMAINS:
        raise SpaceError(f"{where} is an integer field and {kind} draws floats; use randint, qrandint, "
                         "lograndint, qlograndint, choice or grid_search")
    number = int if kind in INT_DOMAINS else (int, float)
    if (not isinstance(args, list) or len(args) != count
            or any(isinstance(a, bool) or not isinstance(a, number) for a in args)):
        shape = "[lower, upper]" if count == 2 else "[lower, upper, q]"
        if kind.endswith("randn"):
            shape = "[mean, sd]" if count == 2 else "[mean, sd, q]"
        kind_of = "integers" if kind in INT_DOMAINS else "numbers"
        raise SpaceError(f"{where}: {kind} takes {count} {kind_of} {shape}, got {args!r}")
    if kind.endswith("randn"):
        if args[1] <= 0:
            raise SpaceError(f"{where}: {kind} needs sd > 0, got {args[1]}")
    elif args[0] >= args[1]:
        raise SpaceError(f"{where}: {kind} range [{args[0]}, {args[1]}] is empty (lower must be below upper)")
    if kind.startswith(("log", "qlog")) and args[0] <= 0:
        raise SpaceError(f"{where}: {kind} needs a lower bound > 0, got {args[0]}")
    if count == 3 and args[2] <= 0:
        raise SpaceError(f"{where}: {kind} needs q > 0, got {args[2]}")
    return tuple(args)


# ----------------------------------------------------------------------------- configs per trial


def plain(value: Any) -> Any:
    """Tune samples numpy scalars; the config wants Python ints, floats and strings."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def trial_config(base: dict, params: dict) -> Config:
    """The base config (as a dict) with a trial's dotted values set; checked like any config."""
    data = copy.deepcopy(base)
    for dotted, value in params.items():
        node = data
        *sections, name = dotted.split(".")
        for section in sections:
            node = node[section]
        node[name] = plain(value)
    return from_dict(data)


def variants(space: Space, cfg: Config) -> list[Config]:
    """Configs that span the space: every combination of candidate values, or, when there are
    too many, each key's candidates alone."""
    base = to_dict(cfg)
    keys = list(space)
    pools = [space[k].candidates() for k in keys]
    total = 1
    for pool in pools:
        total *= len(pool)
    if total <= MAX_VARIANTS:
        combos = [dict(zip(keys, values)) for values in itertools.product(*pools)]
    else:
        combos = [{k: v} for k, pool in zip(keys, pools) for v in pool]
    return [_checked(base, combo) for combo in combos]


def _checked(base: dict, combo: dict) -> Config:
    try:
        return trial_config(base, combo)
    except ConfigError as exc:
        values = ", ".join(f"{k}={v!r}" for k, v in combo.items())
        raise SpaceError(f"search space: a trial with {values} is not a valid config: {exc}") from None


def check_values(space: Space, cfg: Config) -> None:
    """Each value the space can produce must make a valid config (type, range, cross-field)."""
    base = to_dict(cfg)
    for key, param in space.items():
        for value in param.candidates():
            _checked(base, {key: value})
    variants(space, cfg)


def to_tune_space(space: Space) -> dict[str, Any]:
    return {key: param.to_tune() for key, param in space.items()}


def trial_count(space: Space, num_samples: int) -> int:
    """Trials Tune creates: num_samples draws, each covering every grid_search combination."""
    count = num_samples
    for param in space.values():
        if param.kind == "grid_search":
            count *= len(param.args)
    return count


def searched(space: Space) -> list[str]:
    """Keys whose value differs between trials (the table's columns)."""
    return [key for key, param in space.items() if param.kind != FIXED]
