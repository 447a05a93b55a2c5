"""The search space of ``gearfeat search``: searchable parameters, their checks, grids and how trials are drawn."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import ParameterGrid, ParameterSampler

from .._internal.errors import GearfeatError, check_seed, is_int, is_real
from ..models.baseline import BASELINES, baseline_error, baseline_name

HEAD, BASELINE = "head", "baseline"


@dataclass(frozen=True)
class Param:
    """A searchable parameter: the model it configures and how one of its values is checked."""

    kind: str  #: ``"head"`` (a :class:`DenseHead` parameter) or ``"baseline"`` (of :func:`make_baseline`)
    check: Callable[[Any], Any]  #: returns the value in canonical form, or raises ValueError saying what it expects
    example: str  #: a list of values, as written in a space file


def _real(rule: str, ok: Callable[[float], bool]) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, str):  # PyYAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"expected a number {rule}") from None
        if not is_real(value) or not ok(float(value)):
            raise ValueError(f"expected a number {rule}")
        return float(value)
    return check


def _integer(minimum: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if not is_int(value, minimum):
            raise ValueError(f"expected an integer >= {minimum}")
        return int(value)
    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _layers(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)) and all(
            is_int(v, 1) for v in value):
        return tuple(int(v) for v in value)
    raise ValueError("expected a list of positive layer sizes, e.g. [512, 128], or [] for no hidden layer")


def _baseline(value: Any) -> Any:
    if baseline_error(value):
        raise ValueError(f"expected one of {', '.join(BASELINES)} or a scikit-learn classifier")
    return value


PARAMS: dict[str, Param] = {
    "hidden": Param(HEAD, _layers, "[[256], [512, 128], []]"),
    "dropout": Param(HEAD, _real("in [0, 1)", lambda v: 0 <= v < 1), "[0.2, 0.5]"),
    "l2": Param(HEAD, _real(">= 0, finite", lambda v: 0 <= v < math.inf), "[0.0, 1.0e-4]"),
    "batch_norm": Param(HEAD, _flag, "[false, true]"),
    "learning_rate": Param(HEAD, _real("> 0, finite", lambda v: 0 < v < math.inf), "[3.0e-4, 1.0e-3]"),
    "batch_size": Param(HEAD, _integer(1), "[64, 128]"),
    "epochs": Param(HEAD, _integer(1), "[60]"),
    "patience": Param(HEAD, _integer(0), "[8]"),
    "baseline": Param(BASELINE, _baseline, "[logreg, svc]"),
    "baseline_c": Param(BASELINE, _real("> 0, finite", lambda v: 0 < v < math.inf), "[0.1, 1.0, 10.0]"),
}
"""The parameters a search space may vary: the dense head's (see :class:`DenseHead`) and the baseline's."""


DEFAULT_SPACE: dict[str, list] = {
    "hidden": [[256], [512], [512, 128], []],
    "dropout": [0.2, 0.5],
    "l2": [0.0, 1e-4],
    "batch_norm": [False, True],
    "learning_rate": [3e-4, 1e-3, 3e-3],
    "batch_size": [64, 128],
    "epochs": [60],
    "patience": [5],
    "baseline": ["logreg", "svc"],
    "baseline_c": [0.1, 1.0, 10.0],
}
"""The space of ``gearfeat search`` without ``--space`` or ``--param``: 192 head and 6 baseline configurations."""


def _param(name: str) -> Param:
    if name not in PARAMS:
        raise GearfeatError(f"unknown search parameter {name!r}; known parameters: {', '.join(PARAMS)}")
    return PARAMS[name]


def _values(name: str, values: Any) -> list:
    param = _param(name)
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        raise GearfeatError(f"search parameter {name!r}: expected a list of values, e.g. {name}: {param.example}; "
                            f"got {values!r}")
    if not values:
        raise GearfeatError(f"search parameter {name!r} has an empty list of values; give at least one, "
                            f"e.g. {name}: {param.example}")
    checked = []
    for value in values:
        try:
            checked.append(param.check(value))
        except ValueError as exc:
            raise GearfeatError(f"search parameter {name!r}: bad value {' '.join(repr(value).split()):.100}: "
                                f"{exc}") from None
    return checked


class SearchSpace:
    """The values to try, as grids of parameter -> list of values (scikit-learn's list-of-grids form).

    Each grid configures one model: a mapping that mixes head and baseline parameters is split into a head
    grid and a baseline grid. Parameters a grid does not list keep their defaults.
    ``SearchSpace({"dropout": [0.2, 0.5], "baseline_c": [0.1, 1]})`` holds 2 head and 2 baseline
    configurations.
    """

    def __init__(self, grids: Mapping[str, Sequence] | Sequence[Mapping[str, Sequence]]):
        grids = [grids] if isinstance(grids, Mapping) else grids
        if isinstance(grids, (str, bytes)) or not isinstance(grids, Sequence) or not grids:
            raise GearfeatError(f"a search space is a mapping {{parameter: [values]}} or a list of such "
                                f"mappings, got {grids!r}")
        self.grids: list[dict[str, list]] = []
        for grid in grids:
            if not isinstance(grid, Mapping) or not grid:
                raise GearfeatError(f"a search space grid is a non-empty mapping {{parameter: [values]}}, "
                                    f"got {grid!r}")
            by_kind: dict[str, dict[str, list]] = {HEAD: {}, BASELINE: {}}
            for name, values in grid.items():
                by_kind[_param(str(name)).kind][str(name)] = _values(str(name), values)
            _check_estimator_grid(by_kind[BASELINE])
            self.grids.extend(g for g in by_kind.values() if g)

    def __len__(self) -> int:
        return len(ParameterGrid(self.grids))

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_json()!r})"

    def configurations(self, n_trials: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
        """The whole grid (``n_trials`` None or at least :func:`len`: scikit-learn's ``ParameterGrid``), else
        ``n_trials`` distinct configurations drawn at random, stratified by grid.

        The grids share the trials equally, as ``ParameterSampler`` does when it picks a grid at random for each
        draw, none getting more than its size: each trial goes to the grid with the fewest so far that has room
        (ties: the larger, then the first). The default space with 24 trials: 18 heads and all 6 baselines; with
        fewer trials than grids, the largest grids get one each. The trials come grid by grid, in the order of
        :attr:`grids`, each grid's drawn by scikit-learn's ``ParameterSampler`` from one ``RandomState(seed)``
        passed along, so the same seed gives the same trials.
        """
        if n_trials is not None and not is_int(n_trials, 1):
            raise GearfeatError(f"the number of trials must be a positive integer or 'all', got {n_trials!r}")
        check_seed(seed)
        if n_trials is None or n_trials >= len(self):
            return list(ParameterGrid(self.grids))
        rng = np.random.RandomState(seed)
        shares = _shares([len(ParameterGrid(grid)) for grid in self.grids], int(n_trials))
        return [params for grid, share in zip(self.grids, shares) if share
                for params in ParameterSampler(grid, n_iter=share, random_state=rng)]

    def with_values(self, name: str, values: Sequence) -> SearchSpace:
        """A copy where ``name`` takes ``values`` in every grid of its model (a new grid if there is none)."""
        kind = _param(name).kind
        grids = [dict(g) for g in self.grids]
        mine = [g for g in grids if kind_of(g) == kind]
        for grid in mine:
            grid[name] = values
        return SearchSpace(grids if mine else [*grids, {name: values}])

    def to_json(self) -> list[dict[str, list]]:
        """The grids with tuples as lists and estimators by their names, as written to
        ``run.json``."""
        return [{name: [_printable(name, v) for v in values] for name, values in grid.items()} for grid in self.grids]


def _printable(name: str, value: Any) -> Any:
    """A parameter's value as JSON writes it: a tuple as a list, a baseline estimator by its class and parameters."""
    if name == "baseline":
        return baseline_name(value)
    return list(value) if isinstance(value, tuple) else value


def _check_estimator_grid(grid: Mapping[str, list]) -> None:
    """Refuse a baseline grid that gives ``baseline_c`` and an estimator: C is set on an estimator itself."""
    estimators = [v for v in grid.get("baseline", []) if not isinstance(v, str)]
    if estimators and "baseline_c" in grid:
        raise GearfeatError(f"search parameter 'baseline_c' sets the C of the named baselines, but the grid also "
                            f"lists the estimator {baseline_name(estimators[0])}: set C on the estimator, or give "
                            "the estimators a grid of their own")


def _shares(sizes: Sequence[int], n: int) -> list[int]:
    """``n`` (less than ``sum(sizes)``) trials shared equally by grids of ``sizes``, none above its size: each
    goes to the grid with the fewest trials that has room (ties: the larger, then the first)."""
    shares = [0] * len(sizes)
    for _ in range(n):
        best = min((i for i, size in enumerate(sizes) if shares[i] < size),
                   key=lambda i: (shares[i], -sizes[i], i))
        shares[best] += 1
    return shares


def parse_param(text: str) -> tuple[str, list]:
    """``"dropout=0.2,0.5"`` -> ``("dropout", [0.2, 0.5])``; layer lists in brackets: ``"hidden=[256],[512,128],[]"``.

    Values are read as JSON (numbers, ``true``/``false``, lists), words as strings (``baseline=logreg,svc``).
    """
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise GearfeatError(f"params {text!r}: expected NAME=VALUE1,VALUE2,..., e.g. dropout=0.2,0.5",
                            parameter="params")
    _param(name)
    try:
        values = json.loads(f"[{rest}]")
    except ValueError:
        values = [_json_or_word(item) for item in rest.split(",")]
    return name, values


def _json_or_word(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text.strip()


def parse_space(space: str | os.PathLike | Mapping | Sequence | SearchSpace | None = None,
                params: Sequence[str] = ()) -> SearchSpace:
    """The search space from a YAML or JSON file (or a mapping, or a list of mappings) and ``NAME=V1,V2`` texts.

    With neither: :data:`DEFAULT_SPACE`. Each ``params`` text sets its parameter's values on top of
    ``space``; with ``params`` alone only they vary.
    """
    params = [params] if isinstance(params, str) else params  # one flag's text
    if isinstance(space, (str, os.PathLike)):
        space = SearchSpace(_read_space_file(Path(space)))
    elif space is None:
        space = None if params else SearchSpace(DEFAULT_SPACE)
    elif not isinstance(space, SearchSpace):
        space = SearchSpace(space)
    for text in params:
        name, values = parse_param(text)
        space = space.with_values(name, values) if space else SearchSpace({name: values})
    return space


def _read_space_file(path: Path) -> Any:
    if not path.is_file():
        raise GearfeatError(f"search space file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise GearfeatError(f"{path}: reading YAML needs PyYAML (pip install gearfeat[yaml]), or write "
                                "the space as JSON") from None
        load, errors = (lambda text: yaml.load(text, Loader=_unique_keys_yaml_loader(yaml))), yaml.YAMLError
    elif suffix == ".json":
        load, errors = (lambda text: json.loads(text, object_pairs_hook=_unique_keys)), ValueError
    else:
        raise GearfeatError(f"{path}: a search space file ends in .yaml, .yml or .json")
    try:
        return load(path.read_text())
    except (errors, ValueError, OSError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise GearfeatError(f"{path}: cannot read the search space ({reason})") from None


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict:
    """A JSON object as a dict; a key given twice is an error (json keeps the last one silently)."""
    keys = [key for key, _ in pairs]
    duplicate = next((key for key in keys if keys.count(key) > 1), None)
    if duplicate is not None:
        raise ValueError(f"the key {duplicate!r} is given twice")
    return dict(pairs)


def _unique_keys_yaml_loader(yaml):
    """PyYAML's safe loader, refusing a mapping key given twice (it keeps the last one silently)."""
    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            _unique_keys([(self.construct_object(key, deep=deep), None) for key, _ in node.value])
            return super().construct_mapping(node, deep=deep)
    return UniqueKeyLoader


def kind_of(params: Mapping[str, Any]) -> str:
    """The model a configuration is for (a grid holds the parameters of one; none: the default head)."""
    return PARAMS[next(iter(params))].kind if params else HEAD
