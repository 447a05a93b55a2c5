"""``gearfeat search``: many heads tried on the same cached features, in parallel; the best becomes model.h5.

The backbone runs once (the feature cache). Every trial trains one configuration, a :class:`DenseHead` or a
scikit-learn baseline, on the same seeded train split and is scored on the validation split. The test split
is used once: the best configurations are retrained and the run folder is written exactly as ``gearfeat
train`` writes it (:func:`gearfeat.training.fit_and_save`), plus ``trials.csv``, ``trials.json``,
``leaderboard.md`` and ``search.png``.

Trials run through joblib. ``loky`` (the default) runs them in worker processes, each with TensorFlow's
thread pools sized to cores / workers so they do not oversubscribe the CPU; ``threading`` runs them in one
process; ``dask`` (a running ``dask.distributed`` scheduler) and ``ray`` (a Ray cluster) spread them over a
cluster. The feature arrays are sent once, not read from HDF5 per trial: loky memory-maps arrays above
joblib's ``max_nbytes`` (1 MB) into a shared folder that every worker maps, dask scatters each array once
(joblib's auto-scatter of large arguments, by identity), Ray holds each in its object store (put once, read
by reference), and threads share them.
"""
from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import log_loss
from sklearn.model_selection import ParameterGrid, ParameterSampler

from .baseline import BASELINES, make_baseline
from .dataset import Skipped, split_dataset
from .errors import GearfeatError, check_seed, is_int, is_real
from .extractor import ExtractorConfig
from .heads import DenseHead
from .plots import png_path, save_figure
from .progress import Progress
from .runs import RunDir
from .training import SplitConfig, check_settings, extract_dataset, fit_and_save

Log = Callable[[str], None]
HEAD, BASELINE = "head", "baseline"


# ------------------------------------------------------------------------------------------ parameters
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


def _choice(options: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value
    return check


PARAMS: dict[str, Param] = {
    "hidden": Param(HEAD, _layers, "[[256], [512, 128], []]"),
    "dropout": Param(HEAD, _real("in [0, 1)", lambda v: 0 <= v < 1), "[0.2, 0.5]"),
    "l2": Param(HEAD, _real(">= 0, finite", lambda v: 0 <= v < math.inf), "[0.0, 1.0e-4]"),
    "batch_norm": Param(HEAD, _flag, "[false, true]"),
    "learning_rate": Param(HEAD, _real("> 0, finite", lambda v: 0 < v < math.inf), "[3.0e-4, 1.0e-3]"),
    "batch_size": Param(HEAD, _integer(1), "[64, 128]"),
    "epochs": Param(HEAD, _integer(1), "[60]"),
    "patience": Param(HEAD, _integer(0), "[8]"),
    "baseline": Param(BASELINE, _choice(list(BASELINES)), "[logreg, svc]"),
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
            raise GearfeatError(f"search parameter {name!r}: bad value {value!r}: {exc}") from None
    return checked


# ------------------------------------------------------------------------------------------ the space
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
        mine = [g for g in grids if _kind(g) == kind]
        for grid in mine:
            grid[name] = values
        return SearchSpace(grids if mine else [*grids, {name: values}])

    def to_json(self) -> list[dict[str, list]]:
        """The grids with tuples as lists, as written to ``run.json``."""
        return [{name: [list(v) if isinstance(v, tuple) else v for v in values] for name, values in grid.items()}
                for grid in self.grids]


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
        raise GearfeatError(f"--param {text!r}: expected NAME=VALUE1,VALUE2,..., e.g. dropout=0.2,0.5")
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


# ------------------------------------------------------------------------------------------ one trial
def run_trial(params: Mapping[str, Any], X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
              y_val: np.ndarray, n_classes: int, seed: int = 0, threads: int | None = None) -> dict[str, Any]:
    """Train one configuration on the training features and score it on the validation features.

    Returns ``model`` ("dense" or the baseline's name), ``val_loss`` (cross-entropy of the predicted
    probabilities; None for a baseline without probabilities), ``val_accuracy``, ``epochs_run``,
    ``best_epoch`` and ``seconds``. ``threads`` sizes TensorFlow's pools if this process has not used them yet.
    """
    _limit_tf_threads(threads)
    start = time.perf_counter()
    if _kind(params) == BASELINE:
        model = params.get("baseline", "logreg")
        estimator = make_baseline(model, params.get("baseline_c", 1.0), seed=seed).fit(X_train, y_train)
        proba = estimator.predict_proba(X_val) if hasattr(estimator, "predict_proba") else None
        predicted = estimator.predict(X_val)
        epochs_run = best_epoch = None
    else:
        model = "dense"
        head = DenseHead(**params, seed=seed).fit(X_train, y_train, validation_data=(X_val, y_val),
                                                  classes=range(n_classes))
        proba = head.predict_proba(X_val)
        predicted = proba.argmax(axis=1)
        epochs_run, best_epoch = len(head.history_["loss"]), int(head.best_epoch_)
    return {
        "model": model,
        "val_loss": None if proba is None else float(log_loss(y_val, proba, labels=range(n_classes))),
        "val_accuracy": float(np.mean(predicted == y_val)),
        "epochs_run": epochs_run,
        "best_epoch": best_epoch,
        "seconds": time.perf_counter() - start,
    }


def _kind(params: Mapping[str, Any]) -> str:
    """The model a configuration is for (a grid holds the parameters of one; none: the default head)."""
    return PARAMS[next(iter(params))].kind if params else HEAD


def _limit_tf_threads(threads: int | None) -> None:
    """Size TensorFlow's pools before this process's first op (a worker that already ran one keeps its pools)."""
    if threads is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def _numbered_trial(index: int, params: Mapping[str, Any], *args) -> tuple[int, dict[str, Any]]:
    return index, run_trial(params, *(arg.get() if isinstance(arg, _RayObject) else arg for arg in args))


class _RayObject:
    """An array put into Ray's object store once; each trial gets it by reference (``ray.get``), where joblib's
    Ray backend would send the array itself with every trial."""

    def __init__(self, array: np.ndarray):
        import ray
        self.ref = ray.put(array)

    def get(self) -> np.ndarray:
        import ray
        return ray.get(self.ref)


# ------------------------------------------------------------------------------------------ backends
@contextmanager
def _local(name: str, address: str | None) -> Iterator[dict[str, Any]]:
    yield {"backend": name}


_LOKY_IDLE_SECONDS = 1
"""Loky workers leave after this long without a trial (joblib's default: 300 s): each holds a TensorFlow
runtime (hundreds of MB), and one that exits while the winner is retrained does not hold up the end of the
command."""


@contextmanager
def _loky(address: str | None) -> Iterator[dict[str, Any]]:
    yield {"backend": "loky", "idle_worker_timeout": _LOKY_IDLE_SECONDS}


@contextmanager
def _dask(address: str) -> Iterator[dict[str, Any]]:
    from distributed import Client
    try:
        client = Client(address, timeout=20, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: not an address (e.g. no port)
        raise GearfeatError(f"cannot connect to the dask scheduler at {address}: {exc}") from None
    with client:
        yield {"backend": "dask", "client": client}


def _check_dask_address(address: str) -> None:
    """A malformed scheduler address (no port, unknown scheme) is refused before any work; whether the
    scheduler answers is only known when the trials connect."""
    from distributed.comm import get_address_host_port
    if address.startswith("inproc://"):  # an in-process cluster of the caller's (Python API)
        return
    try:
        get_address_host_port(address)
    except ValueError as exc:
        raise GearfeatError(f"--address {address!r} is not a dask scheduler address ({exc}); give one such as "
                            "tcp://10.0.0.5:8786") from None


@contextmanager
def _ray(address: str | None) -> Iterator[dict[str, Any]]:
    import ray
    from ray.util.joblib import register_ray
    register_ray()
    connected = not ray.is_initialized()
    if connected:
        try:
            ray.init(address=address or "auto", logging_level=logging.WARNING)  # not its INFO lines
        except ConnectionError as exc:
            raise GearfeatError(f"cannot connect to a Ray cluster at {address or 'auto'} ({exc}); start one "
                                "with `ray start --head` or pass --address") from None
    pool_log = logging.getLogger("ray.util.multiprocessing.pool")
    pool_log.addFilter(_ignored_context_warning)
    try:
        yield {"backend": "ray", "share": _RayObject}
    finally:
        pool_log.removeFilter(_ignored_context_warning)
        if connected:
            ray.shutdown()


def _ignored_context_warning(record: logging.LogRecord) -> bool:
    """False for the warning Ray's pool logs at every joblib call (joblib passes a multiprocessing context,
    which Ray ignores): not the user's concern."""
    return "'context' argument is not supported" not in record.getMessage()


@dataclass(frozen=True)
class Backend:
    """Where trials run: ``connect(address)`` yields joblib's backend settings (and, under ``"share"``, how to
    hand an array to the workers once, where joblib would not); ``threads(workers)`` sizes TensorFlow's pools
    in each trial (None: leave them)."""

    connect: Callable[[str | None], Any]
    threads: Callable[[int], int | None]
    package: str | None = None  #: the optional package it needs, installed by the extra named like the backend
    address: str | None = None  #: what ``--address`` means for it (None: it takes none)
    address_required: bool = False
    streams: bool = True  #: joblib hands back each trial as it ends (Ray's backend: a call's trials all at the end)
    check_address: Callable[[str], None] | None = None  #: refuses a malformed ``--address`` before any work


BACKENDS: dict[str, Backend] = {
    "loky": Backend(_loky,
                    lambda workers: None if workers == 1 else max(1, joblib.cpu_count() // workers)),
    "threading": Backend(lambda address: _local("threading", address), lambda workers: None),
    "dask": Backend(_dask, lambda workers: 1, package="distributed",
                    address="the scheduler of a running dask.distributed cluster (e.g. tcp://10.0.0.5:8786)",
                    address_required=True, check_address=_check_dask_address),
    "ray": Backend(_ray, lambda workers: 1, package="ray", address="a Ray cluster (default: 'auto')",
                   streams=False),
}
"""joblib backends by name. On a cluster each trial uses one TensorFlow thread: run one worker thread per core."""
DEFAULT_BACKEND = "loky"


def _backend(name: str, address: str | None) -> Backend:
    """The backend ``name``, checked before any work: known, its package importable, ``address`` fits."""
    if name not in BACKENDS:
        raise GearfeatError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    spec = BACKENDS[name]
    if spec.package:
        try:
            importlib.import_module(spec.package)
        except ImportError:
            raise GearfeatError(f"--backend {name} needs the {spec.package!r} package: "
                                f"pip install gearfeat[{name}]") from None
    if address and not spec.address:
        raise GearfeatError(f"--address is for the dask and ray backends, not {name}")
    if spec.address_required and not address:
        raise GearfeatError(f"--backend {name} needs --address, {spec.address}")
    if address and spec.check_address:
        spec.check_address(address)
    return spec


def _check_jobs(jobs: int) -> None:
    if not is_int(jobs, -math.inf) or jobs == 0:  # any integer but 0
        raise GearfeatError(f"jobs must be a positive number of workers or negative (-1: all cores), got {jobs!r}")


def run_trials(configurations: Sequence[Mapping[str, Any]], X_train: np.ndarray, y_train: np.ndarray,
               X_val: np.ndarray, y_val: np.ndarray, *, n_classes: int | None = None, seed: int = 0,
               jobs: int = -1, backend: str | None = None, address: str | None = None,
               progress: bool = True, log: Log = print) -> list[dict[str, Any]]:
    """Run every configuration with :func:`run_trial` in parallel; rows in configuration order, each with its
    ``trial`` number and ``params``. ``backend`` is a name in :data:`BACKENDS` (None: :data:`DEFAULT_BACKEND`)."""
    backend = backend or DEFAULT_BACKEND
    spec = _backend(backend, address)
    _check_jobs(jobs)
    arrays = [np.ascontiguousarray(X_train, np.float32), np.asarray(y_train, np.int64),
              np.ascontiguousarray(X_val, np.float32), np.asarray(y_val, np.int64)]
    n_classes = int(n_classes or max(arrays[1].max(), arrays[3].max()) + 1)
    rows: list[dict[str, Any]] = [{} for _ in configurations]
    with spec.connect(address) as settings:
        share = settings.pop("share", None)
        shared = [share(array) for array in arrays] if share else arrays
        with joblib.parallel_config(n_jobs=int(jobs), **settings):
            workers = max(1, min(len(configurations), joblib.effective_n_jobs(int(jobs))))
            threads = spec.threads(workers)
            log(f"search: {len(configurations)} trial{'s' * (len(configurations) != 1)} on {workers} {backend} "
                f"worker{'s' * (workers > 1)}"
                + (f", {threads} TensorFlow thread{'s' * (threads > 1)} each" if threads else ""))
            calls = [joblib.delayed(_numbered_trial)(i, dict(params), *shared, n_classes, seed, threads)
                     for i, params in enumerate(configurations)]
            with Progress(len(configurations), "search", unit="trial", enabled=progress) as bar:
                for i, row in _finished(calls, workers=workers, streams=spec.streams):
                    rows[i] = {"trial": i, "params": dict(configurations[i]), **row}
                    bar.update()
    return rows


def _finished(calls: list, *, workers: int, streams: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """The trials' ``(index, row)`` as they end, on ``workers`` workers (never more than there are trials). A
    backend that cannot stream results (Ray's hands back all of a call's at its end) runs them in waves of
    twice the workers on one pool, so that the progress bar moves."""
    if streams:
        yield from joblib.Parallel(n_jobs=workers, return_as="generator_unordered")(calls)
        return
    with joblib.Parallel(n_jobs=workers) as parallel:
        for first in range(0, len(calls), 2 * workers):
            yield from parallel(calls[first:first + 2 * workers])


def rank_trials(trials: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The trials best first, each with its ``rank``: highest validation accuracy, then lowest validation loss
    (none last), then trial number."""
    order = sorted(trials, key=lambda t: (-t["val_accuracy"],
                                          math.inf if t["val_loss"] is None else t["val_loss"], t["trial"]))
    return [{**t, "rank": rank} for rank, t in enumerate(order, 1)]


def parameter_influence(trials: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """For each parameter that varied, the share of the validation accuracy's variance its values explain over
    the trials it applies to (``model`` compares the models), most influential first.

    The share is omega squared, clipped at 0: eta squared corrected for the number of values. Uncorrected,
    a parameter whose values all differ "explains" 100 % of any noise, so a parameter is ranked only when some
    of its values were tried more than once (more trials than values).
    """
    values: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for t in trials:
        for name, value in {"model": t["model"], **t["params"]}.items():
            values[name].append((json.dumps(value), t["val_accuracy"]))
    influence = {}
    for name, pairs in values.items():
        groups: dict[str, list[float]] = defaultdict(list)
        for key, accuracy in pairs:
            groups[key].append(accuracy)
        n, k = len(pairs), len(groups)
        if k < 2 or n <= k:
            continue
        accuracies = np.array([a for _, a in pairs])
        total = float(((accuracies - accuracies.mean()) ** 2).sum())
        between = sum(len(g) * (np.mean(g) - accuracies.mean()) ** 2 for g in groups.values())
        within_mean_square = (total - between) / (n - k)
        omega = (between - (k - 1) * within_mean_square) / (total + within_mean_square) if total > 0 else 0.0
        influence[name] = max(0.0, float(omega))
    return dict(sorted(influence.items(), key=lambda item: -item[1]))


def _no_influence_reason(trials: Sequence[Mapping[str, Any]]) -> str:
    """Why :func:`parameter_influence` names no parameter for ``trials``."""
    keys = {key for t in trials for key in t["params"]}
    varied = any(len({json.dumps(t["params"].get(key)) for t in trials}) > 1 for key in keys)
    if varied or len({t["model"] for t in trials}) > 1:
        return "too few trials per value to tell which parameter matters most"
    return "no parameter varied"


# ------------------------------------------------------------------------------------------ the command
@dataclass(repr=False)
class SearchResult:
    """What :func:`search` produced: the run folder, every trial, the leaderboard (best first), the metrics of
    the retrained models and the models themselves (the best dense head, in ``model.h5``, and the best
    baseline)."""

    run_dir: Path
    trials: list[dict[str, Any]]
    leaderboard: list[dict[str, Any]]
    metrics: dict[str, Any]
    skipped: list[Skipped]
    head: DenseHead
    baseline: Any

    @property
    def best(self) -> dict[str, Any]:
        """The first trial of the leaderboard, of any model (a baseline may beat every dense head)."""
        return self.leaderboard[0]

    def __repr__(self) -> str:
        return (f"SearchResult(run_dir={str(self.run_dir)!r}, trials={len(self.trials)}, best_trial="
                f"{self.best['trial']} ({self.best['model']}), test_accuracy={self.metrics['test_accuracy']:.4f})")


def search(data_dir: str | os.PathLike, out: str | os.PathLike, *,
           space: SearchSpace | str | os.PathLike | Mapping | Sequence | None = None, n_trials: int | None = 24,
           jobs: int = -1, backend: str | None = None, address: str | None = None,
           config: ExtractorConfig | None = None, split: SplitConfig | None = None,
           cache_dir: str | os.PathLike = "cache", progress: bool = True, log: Log = print) -> SearchResult:
    """Extract (or reuse) features, try ``n_trials`` configurations of ``space`` on the validation split, then
    retrain the best head and the best baseline (the defaults of a model no trial tried) and write the run
    folder like ``gearfeat train``.

    ``n_trials`` configurations are drawn at random, every grid of the space getting its share (seeded by
    ``split.seed``, see :meth:`SearchSpace.configurations`); None (or "all"), or at least the size of the space,
    runs the whole grid. Writes ``trials.csv``, ``trials.json``, ``leaderboard.md`` and ``search.png`` besides
    ``model.h5`` (the best dense head) and the rest of a train run.
    """
    started = time.perf_counter()
    space = parse_space(space)
    config = config or ExtractorConfig()
    split = split or SplitConfig()
    check_settings(config=config, split=split)
    n_trials = None if n_trials == "all" else n_trials  # as --trials all
    configurations = space.configurations(n_trials, seed=split.seed)
    backend = backend or DEFAULT_BACKEND
    _backend(backend, address)
    _check_jobs(jobs)
    run = RunDir(out, create=True, log=log)
    extraction = extract_dataset(data_dir, config, cache_dir=cache_dir, progress=progress, log=log)
    X, y = extraction.features, extraction.dataset.labels
    parts = split_dataset(extraction.dataset, val_fraction=split.val_fraction, test_fraction=split.test_fraction,
                          seed=split.seed)
    t0 = time.perf_counter()
    trials = run_trials(configurations, X[parts["train"]], y[parts["train"]], X[parts["val"]], y[parts["val"]],
                        n_classes=len(extraction.dataset.class_names), seed=split.seed, jobs=jobs,
                        backend=backend, address=address, progress=progress, log=log)
    search_seconds = time.perf_counter() - t0
    board = rank_trials(trials)
    by_trial = {t["trial"]: t for t in board}
    trials = [by_trial[t["trial"]] for t in trials]
    _write_trials(run, trials)
    best_head = next((t for t in board if t["model"] == "dense"), None)
    best_base = next((t for t in board if t["model"] != "dense"), None)
    base_params = best_base["params"] if best_base else {}
    baseline, baseline_c = base_params.get("baseline", "logreg"), base_params.get("baseline_c", 1.0)
    info = {
        "space": space.to_json(), "configurations": len(space), "trials": len(trials),
        "strategy": "grid" if len(trials) == len(space) else "random", "jobs": jobs, "backend": backend,
        "address": address, "seconds": search_seconds, "winner": board[0]["trial"],
        "head_trials": sum(t["model"] == "dense" for t in trials),
        "baseline_trials": sum(t["model"] != "dense" for t in trials),
        "best_head_trial": best_head and best_head["trial"], "best_baseline_trial": best_base and best_base["trial"],
    }
    kept_baseline = f"{_kept(info['baseline_trials'], 'baseline')}: {baseline}, C={baseline_c:g}"
    log(f"search: {len(trials)} trials in {search_seconds:.1f} s; best: trial {board[0]['trial']} "
        f"({board[0]['model']}, validation accuracy {board[0]['val_accuracy']:.4f}); baseline: {kept_baseline}")
    fitted = fit_and_save(run, extraction, parts, head=DenseHead(**(best_head["params"] if best_head else {})),
                          split=split, baseline=baseline, baseline_c=baseline_c, started=started,
                          command="search", extra={"search": info}, log=log)
    metrics = fitted.metrics
    winner = board[0]
    test_key = "test_accuracy" if winner["model"] == "dense" else "baseline_test_accuracy"
    metrics["winner"] = {"trial": winner["trial"], "model": winner["model"], "params": winner["params"],
                         "val_accuracy": winner["val_accuracy"], "test_accuracy": metrics[test_key]}
    run.write_json("metrics.json", metrics)
    influence = parameter_influence(trials)
    _write_leaderboard(run, board, info, influence, metrics, kept_baseline)
    plot_search(trials, run / "search.png", influence)
    run.record("search.png")
    return SearchResult(run.path, trials, board, metrics, extraction.skipped, fitted.head, fitted.baseline)


# ------------------------------------------------------------------------------------------ results
_RESULT_COLUMNS = ("val_loss", "val_accuracy", "epochs_run", "best_epoch", "seconds")


def _write_trials(run: RunDir, trials: Sequence[Mapping[str, Any]]) -> None:
    run.write_json("trials.json", list(trials))
    names = [name for name in PARAMS if any(name in t["params"] for t in trials)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["trial", "rank", "model", *names, *_RESULT_COLUMNS])
    for t in trials:
        writer.writerow([t["trial"], t["rank"], t["model"],
                         *(_text(t["params"][n]) if n in t["params"] else "" for n in names),
                         *("" if t[c] is None else t[c] for c in _RESULT_COLUMNS)])
    (run / "trials.csv").write_text(buffer.getvalue())
    run.record("trials.csv")


def _kept(tried: int, model: str) -> str:
    """Which of the ``tried`` configurations of ``model`` the run folder keeps, for the summaries."""
    if not tried:
        return "default settings, not searched"
    return f"the best of {tried} {model} configuration{'s' * (tried != 1)} tried"


def _text(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple) else str(value)


def _write_leaderboard(run: RunDir, board: Sequence[Mapping[str, Any]], info: Mapping[str, Any],
                       influence: Mapping[str, float], metrics: Mapping[str, Any], kept_baseline: str) -> None:
    winner = metrics["winner"]
    lines = [
        "# Search leaderboard", "",
        f"{info['trials']} trials ({info['strategy']} search) of {info['configurations']} configurations, "
        f"{info['backend']} backend, {info['seconds']:.1f} s. Ranked by validation accuracy, then validation "
        "loss (cross-entropy; none for baselines without probabilities).", "",
        f"Winner: trial {winner['trial']} ({winner['model']}), test accuracy {winner['test_accuracy']:.4f}. "
        f"`model.h5` holds the dense head, {_kept(info['head_trials'], 'dense head')} (test accuracy "
        f"{metrics['test_accuracy']:.4f}); `baseline.joblib` the baseline, {kept_baseline} (test accuracy "
        f"{metrics['baseline_test_accuracy']:.4f}). These are the only uses of the test split, one per model.", "",
    ]
    if influence:
        name, share = next(iter(influence.items()))
        lines += [f"Most influential parameter: `{name}` (explains about {share:.0%} of the variance of validation "
                  "accuracy over the trials it applies to, omega squared).", ""]
    else:
        lines += [f"Most influential parameter: none named ({_no_influence_reason(board)}).", ""]
    lines += ["| rank | trial | model | val accuracy | val loss | epochs | seconds | parameters |",
              "|---:|---:|---|---:|---:|---:|---:|---|"]
    for t in board:
        params = " ".join(f"{k}={_text(v)}" for k, v in t["params"].items()) or "(defaults)"
        loss = "" if t["val_loss"] is None else f"{t['val_loss']:.4f}"
        lines.append(f"| {t['rank']} | {t['trial']} | {t['model']} | {t['val_accuracy']:.4f} | {loss} | "
                     f"{t['epochs_run'] or ''} | {t['seconds']:.1f} | {params} |")
    (run / "leaderboard.md").write_text("\n".join(lines) + "\n")
    run.record("leaderboard.md")


def plot_search(trials: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                influence: Mapping[str, float] | None = None) -> Path:
    """Validation accuracy per trial (left; a star on the trial :func:`rank_trials` puts first) and against
    the most influential parameter (right)."""
    path = png_path(path)
    influence = parameter_influence(trials) if influence is None else influence
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    best = rank_trials(trials)[0]
    for model in sorted({t["model"] for t in trials}, key=lambda m: (m != "dense", m)):
        mine = [t for t in trials if t["model"] == model]
        left.plot([t["trial"] for t in mine], [t["val_accuracy"] for t in mine], "o" if model == "dense" else "s",
                  label=model, alpha=0.8)
    left.plot(best["trial"], best["val_accuracy"], "*", color="tab:red", markersize=16,
              label=f"best: trial {best['trial']}")
    left.set(xlabel="Trial", ylabel="Validation accuracy", title="Validation accuracy per trial")
    left.grid(alpha=0.3)
    left.legend()
    if influence:
        name, share = next(iter(influence.items()))
        _plot_by_value(right, trials, name)
        right.set_title(f"By {name} (explains about {share:.0%} of the variance)")
    else:
        right.text(0.5, 0.5, _no_influence_reason(trials), ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    return save_figure(fig, path)


def _plot_by_value(ax, trials: Sequence[Mapping[str, Any]], name: str) -> None:
    """Each trial's validation accuracy over the values of ``name`` (slightly spread), with each value's mean."""
    groups: dict[str, list[float]] = defaultdict(list)
    for t in trials:
        value = t["model"] if name == "model" else t["params"].get(name)
        if name == "model" or name in t["params"]:
            groups[_text(value)].append(t["val_accuracy"])
    labels = sorted(groups, key=_sort_key)
    rng = np.random.default_rng(0)
    for x, label in enumerate(labels):
        accuracies = groups[label]
        ax.plot(x + rng.uniform(-0.12, 0.12, len(accuracies)), accuracies, "o", color="tab:blue", alpha=0.6)
        ax.plot([x - 0.25, x + 0.25], [np.mean(accuracies)] * 2, color="tab:red", linewidth=2)
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel=name, ylabel="Validation accuracy")
    ax.grid(alpha=0.3)


def _sort_key(label: str) -> tuple:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)
