import dataclasses
import json
import re
import sys

import numpy as np
import pytest
from PIL import Image

from gearfeat.models.baseline import BASELINES
from gearfeat.tuning import backends, results, trials as trials_module
from gearfeat.cli import main
from gearfeat.data.dataset import split_dataset
from gearfeat._internal.errors import GearfeatError
from gearfeat.models.heads import DenseHead
from gearfeat.tuning.backends import Workers
from gearfeat.tuning.space import DEFAULT_SPACE, PARAMS, SearchSpace, parse_param, parse_space
from gearfeat.tuning.trials import parameter_influence, rank_trials, run_trials
from gearfeat.tuning.results import plot_search
from gearfeat.workflows.search import search
from gearfeat.data.dataset import SplitConfig
from gearfeat.features.extractor import extract_dataset

from conftest import tiny_config

TINY_ARGS = ["--backbone", "mobilenet_v2", "--alpha", "0.35", "--weights", "none", "--image-size", "32",
             "--backbone-size", "32", "--no-progress"]
FAST = {"hidden": [[8], []], "epochs": [3], "learning_rate": [1e-2, 1e-3], "baseline": ["logreg"]}
quiet = dict(progress=False)


@pytest.fixture(scope="module")
def blobs():
    """3 well-separated Gaussian classes in 16 dimensions: train (60 rows) and validation (30 rows)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.5, (3, 16))
    y = np.repeat(np.arange(3), 30)
    X = (centres[y] + rng.normal(0, 1.0, (90, 16))).astype(np.float32)
    order = rng.permutation(90)
    return X[order[:60]], y[order[:60]], X[order[60:]], y[order[60:]]


def _results(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


# ------------------------------------------------------------------------------------------ the space
def test_registry_matches_the_head_and_the_baseline():
    head_params = {name for name, p in PARAMS.items() if p.kind == "head"}
    assert head_params <= set(DenseHead().get_params()) - {"seed", "verbose"}
    assert PARAMS["baseline"].check("svc") == "svc" and set(BASELINES) >= {"logreg", "svc"}
    space = SearchSpace(DEFAULT_SPACE)
    assert len(space) == 4 * 2 * 2 * 2 * 3 * 2 + 2 * 3
    assert [sorted(g) for g in space.grids] == [sorted(set(DEFAULT_SPACE) - {"baseline", "baseline_c"}),
                                                ["baseline", "baseline_c"]]


@pytest.mark.parametrize("space, message", [
    ({"dropuot": [0.1]}, "unknown search parameter 'dropuot'; known parameters: hidden, dropout"),
    ({"dropout": []}, "search parameter 'dropout' has an empty list of values"),
    ({"dropout": 0.2}, "search parameter 'dropout': expected a list of values, e.g. dropout: [0.2, 0.5]; got 0.2"),
    ({"dropout": [0.2, "high"]}, "search parameter 'dropout': bad value 'high': expected a number in [0, 1)"),
    ({"dropout": [1.0]}, "search parameter 'dropout': bad value 1.0: expected a number in [0, 1)"),
    ({"batch_size": [64, 1.5]}, "search parameter 'batch_size': bad value 1.5: expected an integer >= 1"),
    ({"epochs": [True]}, "search parameter 'epochs': bad value True: expected an integer >= 1"),
    ({"batch_norm": ["yes"]}, "search parameter 'batch_norm': bad value 'yes': expected true or false"),
    ({"hidden": [256, 512]}, "search parameter 'hidden': bad value 256: expected a list of positive layer sizes"),
    ({"hidden": [[512, 0]]}, "search parameter 'hidden': bad value [512, 0]"),
    ({"baseline": ["forest"]}, "search parameter 'baseline': bad value 'forest': expected one of logreg"),
    ({"baseline_c": [-1]}, "search parameter 'baseline_c': bad value -1: expected a number > 0, finite"),
    ({"learning_rate": [1e-3, "inf"]}, "search parameter 'learning_rate': bad value 'inf': expected a number > 0"),
    ({"l2": [float("nan")]}, "search parameter 'l2': bad value nan: expected a number >= 0, finite"),
    ([], "a search space is a mapping"),
    ([{}], "a search space grid is a non-empty mapping"),
])
def test_a_bad_space_is_rejected_naming_the_parameter_and_value(space, message):
    with pytest.raises(GearfeatError, match=re.escape(message)):
        SearchSpace(space)


def test_a_space_takes_scikit_learn_classifiers_as_baselines():
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler
    knn = KNeighborsClassifier(n_neighbors=2)
    space = SearchSpace({"dropout": [0.1], "baseline": ["logreg", knn]})
    assert space.grids[1] == {"baseline": ["logreg", knn]}  # the estimator itself, for the trials
    assert space.to_json()[1] == {"baseline": ["logreg", "KNeighborsClassifier(n_neighbors=2)"]}
    with pytest.raises(GearfeatError, match=r"^search parameter 'baseline': bad value StandardScaler\(\): expected "
                                            r"one of logreg, linear_svc, svc or a scikit-learn classifier$"):
        SearchSpace({"baseline": [StandardScaler()]})
    with pytest.raises(GearfeatError, match=r"^search parameter 'baseline_c' sets the C of the named baselines, but "
                                            r"the grid also lists the estimator KNeighborsClassifier\(n_neighbors=2\)"):
        SearchSpace({"baseline": ["svc", knn], "baseline_c": [0.1, 1.0]})
    with pytest.raises(GearfeatError, match=r"^search parameter 'baseline_c' sets the C"):
        SearchSpace({"baseline": [knn]}).with_values("baseline_c", [1.0])


def test_param_flags_and_space_files(tmp_path):
    assert parse_param("dropout=0.2,0.5") == ("dropout", [0.2, 0.5])
    assert parse_param("hidden=[256],[512,128],[]") == ("hidden", [[256], [512, 128], []])
    assert parse_param("baseline=logreg, svc") == ("baseline", ["logreg", "svc"])
    assert parse_param("learning_rate=1e-3") == ("learning_rate", [1e-3])
    with pytest.raises(GearfeatError, match=r"^params 'dropout': expected NAME=VALUE1,VALUE2"):
        parse_param("dropout")
    with pytest.raises(GearfeatError, match="unknown search parameter 'hiden'"):
        parse_param("hiden=[8]")
    with pytest.raises(GearfeatError, match="'l2' has an empty list"):
        parse_space(None, ["l2="])

    only = parse_space(None, ["dropout=0.1,0.3", "baseline_c=1,10"])
    assert only.grids == [{"dropout": [0.1, 0.3]}, {"baseline_c": [1.0, 10.0]}]
    assert len(parse_space()) == len(SearchSpace(DEFAULT_SPACE))

    yaml_file = tmp_path / "space.yaml"  # PyYAML reads 1e-4 as a string: accepted as a number
    yaml_file.write_text("hidden: [[64], []]\nl2: [0, 1e-4]\nbatch_norm: [true]\nbaseline: [svc]\n")
    space = parse_space(yaml_file, ["l2=0.01"])
    assert space.grids == [{"hidden": [(64,), ()], "l2": [0.01], "batch_norm": [True]}, {"baseline": ["svc"]}]
    json_file = tmp_path / "space.json"
    json_file.write_text(json.dumps([{"hidden": [[32]]}, {"hidden": [[64, 32]], "dropout": [0.1]}]))
    assert len(parse_space(json_file)) == 2
    json_file.write_text("{'hidden': ")
    with pytest.raises(GearfeatError, match=r"space.json: cannot read the search space \(Expecting"):
        parse_space(json_file)
    with pytest.raises(GearfeatError, match="search space file not found"):
        parse_space(tmp_path / "missing.yaml")
    (tmp_path / "space.txt").write_text("dropout: [0.1]")
    with pytest.raises(GearfeatError, match=r"space.txt: a search space file ends in \.yaml, \.yml or \.json"):
        parse_space(tmp_path / "space.txt")
    yaml_file.write_text("dropout: [0.2]\nhidden: [[64]]\ndropout: [0.9]\n")  # a key twice: not the last silently
    with pytest.raises(GearfeatError, match=r"space.yaml: cannot read the search space \(the key 'dropout' is given "
                                            r"twice\)"):
        parse_space(yaml_file)
    json_file.write_text('{"dropout": [0.2], "dropout": [0.9]}')
    with pytest.raises(GearfeatError, match=r"space.json: cannot read the search space \(the key 'dropout' is given "
                                            r"twice\)"):
        parse_space(json_file)


def test_configurations_grid_and_seeded_random():
    space = SearchSpace(DEFAULT_SPACE)
    first = space.configurations(24, seed=3)
    assert first == space.configurations(24, seed=3) and first != space.configurations(24, seed=4)
    assert len(first) == 24 and len({json.dumps(c, sort_keys=True) for c in first}) == 24
    small = SearchSpace({"dropout": [0.1, 0.2], "baseline": ["svc"]})
    assert small.configurations(None) == small.configurations(50) == [{"dropout": 0.1}, {"dropout": 0.2},
                                                                       {"baseline": "svc"}]
    with pytest.raises(GearfeatError, match="number of trials must be a positive integer or 'all', got 0"):
        space.configurations(0)


def test_the_default_search_tries_a_baseline():
    default = SearchSpace(DEFAULT_SPACE)
    assert [len(SearchSpace(g)) for g in default.grids] == [192, 6]  # one head grid, one baseline grid
    drawn = default.configurations(24, seed=0)
    assert drawn == default.configurations(24, seed=0) and len({json.dumps(c, sort_keys=True) for c in drawn}) == 24
    assert [("baseline" in c or "baseline_c" in c) for c in drawn] == [False] * 18 + [True] * 6  # 12 each, max 6
    assert sorted((c["baseline"], c["baseline_c"]) for c in drawn[18:]) == sorted(
        (b, c) for b in DEFAULT_SPACE["baseline"] for c in DEFAULT_SPACE["baseline_c"])  # the whole baseline grid


def test_a_sampled_search_gives_every_grid_its_share():
    two = SearchSpace({"dropout": [0.1, 0.2, 0.3, 0.4], "l2": [0.0, 0.1, 0.2], "baseline_c": [0.1, 1.0]})
    for seed in range(10):
        head, base = two.configurations(2, seed=seed)
        assert set(head) == {"dropout", "l2"} and set(base) == {"baseline_c"}
    three = SearchSpace([{"dropout": [0.1, 0.2]}, {"l2": [0.0, 0.1, 0.2]}, {"baseline_c": [0.1, 1.0, 10.0]}])
    assert [set(c) for c in three.configurations(2, seed=0)] == [{"l2"}, {"baseline_c"}]  # largest grids first
    assert [set(c) for c in three.configurations(7, seed=0)] == [{"dropout"}] * 2 + [{"l2"}] * 3 + [
        {"baseline_c"}] * 2  # round robin over grids of 2, 3, 3: the fewest trials first, ties to the larger
    for bad in (-1, 2**32, 1.5, True):
        with pytest.raises(GearfeatError, match=f"seed must be an integer from 0 to 4294967295, got {bad!r}"):
            three.configurations(2, seed=bad)


def test_the_search_figure_stars_the_trial_ranked_first(tmp_path, monkeypatch):
    rows = [{"trial": 0, "model": "dense", "val_accuracy": 0.9, "val_loss": 0.5, "params": {"dropout": 0.2}},
            {"trial": 1, "model": "dense", "val_accuracy": 0.9, "val_loss": 0.3, "params": {"dropout": 0.5}},
            {"trial": 2, "model": "logreg", "val_accuracy": 0.8, "val_loss": None, "params": {"baseline": "logreg"}}]
    assert rank_trials(rows)[0]["trial"] == 1  # equal accuracy: the lower validation loss ranks first
    figures = []
    monkeypatch.setattr(results, "save_figure", lambda fig, path: figures.append(fig) or path)
    plot_search(rows, tmp_path / "search.png")
    [star] = [line for line in figures[0].axes[0].lines if line.get_marker() == "*"]
    assert list(star.get_xdata()) == [1] and star.get_label() == "best: trial 1"


def test_parameter_influence_and_the_search_figure(tmp_path):
    rows = [{"trial": i, "model": "dense", "val_accuracy": 0.5 + 0.4 * (lr == 1e-2) + 0.01 * (dropout == 0.5),
             "val_loss": 0.5, "params": {"dropout": dropout, "learning_rate": lr}}
            for i, (dropout, lr) in enumerate([(0.2, 1e-3), (0.2, 1e-2), (0.5, 1e-3), (0.5, 1e-2)] * 2)]
    influence = parameter_influence(rows)
    assert list(influence) == ["learning_rate", "dropout"]
    assert influence["learning_rate"] > 0.99 and influence["dropout"] < 0.01
    assert Image.open(plot_search(rows, tmp_path / "search.png")).size[0] > 500
    assert parameter_influence(rows[:1]) == {}
    assert Image.open(plot_search(rows[:1], tmp_path / "one.png")).size[0] > 500
    noise = [{**row, "val_accuracy": 0.9 + 0.001 * i} for i, row in enumerate(rows)]
    assert max(parameter_influence(noise).values()) < 0.1  # a trend over trials, not the values: eta squared said 0.19
    distinct = [{**row, "params": {"learning_rate": 10.0 ** -i}} for i, row in enumerate(rows[:3])]
    assert parameter_influence(distinct) == {}  # each value once: eta squared would say 100 %
    assert trials_module.no_influence_reason(distinct) == "too few trials per value to tell which parameter matters most"
    assert trials_module.no_influence_reason(rows[:1]) == "no parameter varied"


# ------------------------------------------------------------------------------------------ trials
def test_trials_are_deterministic_and_ranked(blobs, logged):
    configurations = SearchSpace(FAST).configurations()
    first = run_trials(configurations, *blobs, seed=5, progress=False, workers=Workers(2, "loky"))
    again = run_trials(configurations, *blobs, seed=5, workers=Workers(2, "loky"), **quiet)
    assert _results(first) == _results(again)
    assert re.fullmatch(r"search: 5 trials on 2 loky workers, \d+ TensorFlow threads? each", logged()[0])
    assert [r["params"] for r in first] == configurations
    assert {r["model"] for r in first} == {"dense", "logreg"}
    dense = [r for r in first if r["model"] == "dense"]
    assert all(r["epochs_run"] == 3 and 1 <= r["best_epoch"] <= 3 and r["val_loss"] > 0 for r in dense)
    assert max(r["val_accuracy"] for r in first) > 0.8  # separable blobs: the trials really learn
    board = rank_trials(first)
    assert [r["rank"] for r in board] == [1, 2, 3, 4, 5]
    keys = [(-r["val_accuracy"], r["val_loss"]) for r in board]
    assert keys == sorted(keys)


def test_a_trial_trains_with_the_runs_seed_as_the_retrained_winner_does(blobs):
    """A trial's score is the score of the head the run retrains: same parameters, same seed, same data."""
    from sklearn.metrics import log_loss

    from gearfeat.tuning.trials import run_trial
    X_train, y_train, X_val, y_val = blobs
    params = {"hidden": [8], "epochs": 3, "dropout": 0.5}
    trial = run_trial(params, *blobs, 3, seed=5)
    head = DenseHead(**params, seed=5).fit(X_train, y_train, validation_data=(X_val, y_val), classes=range(3))
    assert trial["val_loss"] == pytest.approx(log_loss(y_val, head.predict_proba(X_val), labels=range(3)), rel=1e-6)
    assert run_trial(params, *blobs, 3, seed=6)["val_loss"] != trial["val_loss"]


def test_backend_errors_are_one_line(monkeypatch):
    with pytest.raises(GearfeatError, match="unknown backend 'mpi'; choose one of: loky, threading, dask, ray"):
        Workers(backend="mpi")
    with pytest.raises(GearfeatError, match="jobs must be a positive number"):
        Workers(0)
    with pytest.raises(GearfeatError, match="^address is for the dask and ray backends, not loky"):
        Workers(backend="loky", address="tcp://127.0.0.1:8786")
    with pytest.raises(GearfeatError, match="^address is for the dask and ray backends, not local"):
        Workers(address="tcp://127.0.0.1:8786")  # the default backend
    monkeypatch.setitem(sys.modules, "ray", None)  # as on a machine without Ray
    with pytest.raises(GearfeatError, match=re.escape("backend ray needs the 'ray' package: "
                                                      "pip install gearfeat[ray]")):
        Workers(backend="ray")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(GearfeatError, match=re.escape("backend dask needs the 'distributed' package: "
                                                      "pip install gearfeat[dask]")):
        Workers(backend="dask", address="tcp://127.0.0.1:8786")


def test_dask_backend_on_a_local_cluster(blobs, logged):
    distributed = pytest.importorskip("distributed")
    configurations = SearchSpace(FAST).configurations()
    with pytest.raises(GearfeatError, match="^backend dask needs address"):
        Workers(backend="dask")
    local = run_trials(configurations, *blobs, progress=False, workers=Workers(1))
    assert logged() == ["search: 5 trials in this process on 1 thread (4 heads in 2 stacks, 1 baseline)"]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        rows = run_trials(configurations, *blobs, workers=Workers(-1, "dask", address=cluster.scheduler_address),
                          **quiet)
    _assert_same_trials(rows, local, configurations)


def test_ray_backend_on_a_local_cluster(blobs, monkeypatch):
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install gearfeat[ray])")
    configurations = SearchSpace(FAST).configurations()
    local = run_trials(configurations, *blobs, workers=Workers(1), **quiet)
    puts = []
    put = ray.put
    monkeypatch.setattr(ray, "put", lambda value, **kwargs: puts.append(value.shape) or put(value, **kwargs))
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        rows = run_trials(configurations, *blobs, workers=Workers(-1, "ray"), **quiet)
    finally:
        ray.shutdown()
    _assert_same_trials(rows, local, configurations)
    assert len(puts) == 4  # the four arrays, each put once, not sent with each of the 5 trials


def test_a_backend_that_cannot_stream_results_runs_trials_in_waves(blobs, monkeypatch):
    configurations = SearchSpace(FAST).configurations()
    local = run_trials(configurations, *blobs, workers=Workers(1), **quiet)
    monkeypatch.setitem(backends.BACKENDS, "threading", dataclasses.replace(backends.BACKENDS["threading"], streams=False))
    waves, call = [], trials_module.joblib.Parallel.__call__
    monkeypatch.setattr(trials_module.joblib.Parallel, "__call__",
                        lambda self, calls: waves.append(len(calls)) or call(self, calls))
    updates = []
    monkeypatch.setattr(trials_module.Progress, "update", lambda self, n=1: updates.append(n))
    rows = run_trials(configurations, *blobs, workers=Workers(1, "threading"))
    # 2 stacks and 1 baseline in waves of twice the workers; the bar moves trial by trial
    assert waves == [2, 1] and len(updates) == 5
    _assert_same_trials(rows, local, configurations)


def test_no_more_workers_than_trials(blobs, monkeypatch, logged):
    workers, parallel = [], trials_module.joblib.Parallel

    class Recording(parallel):
        def __init__(self, *args, **kwargs):
            workers.append(kwargs.get("n_jobs"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(trials_module.joblib, "Parallel", Recording)
    run_trials([{}, {"hidden": []}], *blobs, progress=False, workers=Workers(8, "threading"))
    assert workers == [2] and logged() == ["search: 2 trials on 2 threading workers"]


def test_a_stack_split_by_the_memory_budget_gives_the_same_trials(blobs, logged):
    from gearfeat.tuning.trials import STACK_BUDGET
    configurations = SearchSpace({**FAST, "learning_rate": [1e-2, 3e-3, 1e-3], "dropout": [0.0, 0.3]}).configurations()
    whole = run_trials(configurations, *blobs, seed=3, progress=False, workers=Workers(2))
    split = run_trials(configurations, *blobs, seed=3, budget=1, progress=False, workers=Workers(2))
    assert logged() == ["search: 13 trials in this process on 2 threads (12 heads in 2 stacks, 1 baseline)",
                        "search: 13 trials in this process on 2 threads (12 heads in 12 stacks, 1 baseline)"]
    for a, b in zip(whole, split):  # each head alone in its stack: the same trial, to float rounding
        assert a["params"] == b["params"] and a["val_accuracy"] == b["val_accuracy"]
        assert a["epochs_run"] == b["epochs_run"] and a["best_epoch"] == b["best_epoch"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
    assert whole.best_head.get_params() == split.best_head.get_params()


def test_the_whole_default_grid_is_planned_within_2_gb():
    """--trials all: a stack runs on each core (2 here) at once, so the two largest stacks (plus the features)
    bound memory."""
    from gearfeat.models.stacked import plan_stacks, stack_bytes
    from gearfeat.tuning.space import BASELINE, DEFAULT_SPACE, kind_of
    from gearfeat.tuning.trials import STACK_BUDGET
    configurations = SearchSpace(DEFAULT_SPACE).configurations()
    heads = [DenseHead(**c) for c in configurations if kind_of(c) != BASELINE]
    assert len(configurations) == 198
    stacks = plan_stacks(heads, n_features=1280, n_classes=10, n_val=2000, budget=STACK_BUDGET)
    assert sorted(i for s in stacks for i in s) == list(range(len(heads)))
    features = 4 * 1280 * 10_000  # 10,000 images of features, train and validation
    sizes = sorted(stack_bytes(heads[s[0]].hidden, len(s), 1280, 10, heads[s[0]].batch_size, 2000) for s in stacks)
    assert sizes[-1] <= STACK_BUDGET and sum(sizes[-2:]) + features < 2 << 30


def _assert_same_trials(rows, local, configurations):
    assert [r["params"] for r in rows] == configurations
    for mine, theirs in zip(rows, local):
        assert mine["val_accuracy"] == pytest.approx(theirs["val_accuracy"], abs=1 / 30 + 1e-9)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], rel=1e-3)


# ------------------------------------------------------------------------------------------ the command
@pytest.fixture(scope="module")
def searched(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    space = {"hidden": [[16], []], "epochs": [2], "baseline": ["logreg", "svc"]}
    spy = {"head_test": 0, "baseline_test": 0, "head_fit": 0, "trial_inputs": []}
    extraction = extract_dataset(shapes_dir, tiny_config(), cache_dir=out / "cache", progress=False)
    parts = split_dataset(extraction.dataset, seed=2)
    X, spy["labels"] = extraction.features, extraction.dataset.labels
    with pytest.MonkeyPatch.context() as mp:
        from sklearn.pipeline import Pipeline

        def counting(original, key):
            def wrapped(self, features, *args, **kwargs):
                spy[key] += np.array_equal(np.asarray(features, np.float32), X[parts["test"]])
                return original(self, features, *args, **kwargs)
            return wrapped

        def recording_trial(params, X_train, y_train, X_val, y_val, *args):
            spy["trial_inputs"].append((X_train, X_val))
            return run_trial(params, X_train, y_train, X_val, y_val, *args)

        def recording_stack(indexes, configurations, X_train, y_train, X_val, y_val, *args):
            spy["trial_inputs"].extend([(X_train, X_val)] * len(indexes))
            return run_stack(indexes, configurations, X_train, y_train, X_val, y_val, *args)

        def counting_fit(self, *args, **kwargs):
            spy["head_fit"] += 1
            return fit(self, *args, **kwargs)

        run_trial, run_stack, fit = trials_module.run_trial, trials_module.run_stack, DenseHead.fit
        mp.setattr(DenseHead, "fit", counting_fit)
        mp.setattr(trials_module, "run_stack", recording_stack)
        mp.setattr(DenseHead, "predict_proba", counting(DenseHead.predict_proba, "head_test"))
        mp.setattr(Pipeline, "predict", counting(Pipeline.predict, "baseline_test"))
        mp.setattr(trials_module, "run_trial", recording_trial)
        result = search(shapes_dir, out / "run", space=space, jobs=1, config=tiny_config(),
                        split=SplitConfig(seed=2), cache_dir=out / "cache", **quiet)
    return result, spy, X, parts


def test_search_writes_a_train_run_plus_the_trials(searched):
    result, _, _, _ = searched
    folder = result.run_dir
    assert {"model.h5", "metrics.json", "history.json", "loss.png", "confusion.png", "baseline.joblib",
            "run.json", "manifest.json", "trials.csv", "trials.json", "leaderboard.md", "search.png"} <= {
        p.name for p in folder.iterdir()}
    trials = json.loads((folder / "trials.json").read_text())
    assert [t["trial"] for t in trials] == [0, 1, 2, 3] and sorted(t["rank"] for t in trials) == [1, 2, 3, 4]
    assert {t["model"] for t in trials} == {"dense", "logreg", "svc"}
    assert (folder / "trials.csv").read_text().splitlines()[0] == (
        "trial,rank,model,hidden,epochs,baseline,val_loss,val_accuracy,epochs_run,best_epoch,seconds")
    board = (folder / "leaderboard.md").read_text()
    assert board.index(f"| 1 | {result.best['trial']} |") < board.index("| 2 |")
    assert "the best of 2 dense head configurations tried" in board
    assert re.search(r"the best of 2 baseline configurations tried: (logreg|svc), C=1 \(test accuracy", board)
    run = json.loads((folder / "run.json").read_text())
    assert run["command"] == "search" and run["search"]["trials"] == 4 and run["search"]["strategy"] == "grid"
    best_dense = next(t for t in result.leaderboard if t["model"] == "dense")
    assert run["head"]["hidden"] == list(best_dense["params"]["hidden"]) and run["epochs_run"] == 2
    assert list(result.head.hidden) == list(best_dense["params"]["hidden"]) and result.baseline.predict(
        np.zeros((1, 1280), np.float32)).shape == (1,)  # the models it kept, fitted
    assert repr(result).startswith(f"SearchResult(run_dir={str(result.run_dir)!r}, trials=4, best_trial=")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["winner"]["trial"] == result.best["trial"]
    assert metrics["stitched_vs_head_max_abs_diff"] <= 1e-5
    assert Image.open(folder / "search.png").size[0] > 500
    assert set(json.loads((folder / "manifest.json").read_text())) >= {"trials.csv", "search.png", "model.h5"}


def test_a_search_without_baseline_trials_says_its_baseline_is_the_default(searched, shapes_dir, tmp_path, logged):
    cache = searched[0].run_dir.parent / "cache"  # the features of the searched fixture, reused
    result = search(shapes_dir, tmp_path / "run", space={"hidden": [[]], "epochs": [1]}, jobs=1,
                    config=tiny_config(), split=SplitConfig(seed=2), cache_dir=cache, progress=False)
    assert {t["model"] for t in result.trials} == {"dense"} and result.metrics["baseline"] == "logreg"
    board = (result.run_dir / "leaderboard.md").read_text()
    assert "`baseline.joblib` the baseline, default settings, not searched: logreg, C=1 (test accuracy" in board
    assert "best baseline" not in board and "the best of 1 dense head configuration tried" in board
    assert any(line.endswith("; baseline: default settings, not searched: logreg, C=1") for line in logged())
    run = json.loads((result.run_dir / "run.json").read_text())["search"]
    assert (run["head_trials"], run["baseline_trials"], run["best_baseline_trial"]) == (1, 0, None)
    again = search(shapes_dir, tmp_path / "all", space={"hidden": [[], [4]], "epochs": [1]}, n_trials="all", jobs=1,
                   config=tiny_config(), split=SplitConfig(seed=2), cache_dir=cache, progress=False)
    assert len(again.trials) == 2  # "all" as on the command line: the whole grid


def test_the_test_split_is_used_once_by_the_winners_only(searched):
    _, spy, X, parts = searched
    assert len(spy["trial_inputs"]) == 4
    for X_train, X_val in spy["trial_inputs"]:  # trials see exactly the train and validation rows
        assert np.array_equal(X_train, X[parts["train"]]) and np.array_equal(X_val, X[parts["val"]])
    assert spy["head_test"] == 1 and spy["baseline_test"] == 1  # the best head and the best baseline, once


def test_the_winning_head_is_its_trials_head_not_trained_again(searched):
    from sklearn.metrics import log_loss

    result, spy, X, parts = searched
    assert spy["head_fit"] == 0  # sliced out of its stack: no DenseHead was fitted, the winner not retrained
    best_dense = next(t for t in result.leaderboard if t["model"] == "dense")
    y_val = spy["labels"][parts["val"]]
    proba = result.head.predict_proba(X[parts["val"]])  # the kept head scores as its trial did
    assert float(np.mean(proba.argmax(axis=1) == y_val)) == best_dense["val_accuracy"]
    assert log_loss(y_val, proba, labels=range(proba.shape[1])) == pytest.approx(best_dense["val_loss"], rel=1e-5)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert len(history["loss"]) == best_dense["epochs_run"]


def test_cli_search_and_its_one_line_errors(shapes_dir, tmp_path, capsys, monkeypatch):
    base = ["search", str(shapes_dir), *TINY_ARGS, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    assert main([*base, "--param", "dropuot=0.1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gearfeat: error: unknown search parameter 'dropuot'") and "\n" not in err
    assert main([*base, "--param", "batch_size=64,big"]) == 1
    assert "search parameter 'batch_size': bad value 'big'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main([*base, "--backend", "ray"]) == 1
    assert "pip install gearfeat[ray]" in capsys.readouterr().err
    assert main([*base, "--backend", "dask"]) == 1
    assert "--backend dask needs --address" in capsys.readouterr().err
    assert main([*base, "--test-fraction", "0"]) == 1
    assert capsys.readouterr().err.startswith("gearfeat: error: --test-fraction is 0.0: training needs test images")
    with pytest.raises(SystemExit) as info:
        main([*base, "--trials", "many"])
    assert info.value.code == 2
    capsys.readouterr()
    assert not (tmp_path / "o").exists()  # bad settings fail before any work
    for address, reason in (("notaurl", "missing port number in address 'notaurl'"),
                            ("foo://h:1", "unknown address scheme 'foo'")):
        assert main([*base, "--backend", "dask", "--address", address]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"gearfeat: error: --address {address!r} is not a dask scheduler address ({reason}")
        assert err.endswith("give one such as tcp://10.0.0.5:8786\n") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before the extraction


def test_a_search_keeps_the_best_baseline_estimator_by_its_name(searched, shapes_dir, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier
    knn = KNeighborsClassifier(n_neighbors=1)
    cache = searched[0].run_dir.parent / "cache"  # the features of the searched fixture, reused
    result = search(shapes_dir, tmp_path / "run", space={"hidden": [[]], "epochs": [1], "baseline": [knn]},
                    n_trials=None, jobs=1, config=tiny_config(), split=SplitConfig(seed=2), cache_dir=cache, **quiet)
    name = "KNeighborsClassifier(n_neighbors=1)"
    assert {t["model"] for t in result.trials} == {"dense", name}
    assert [t["params"] for t in result.trials if t["model"] != "dense"] == [{"baseline": name}]
    assert type(result.baseline) is KNeighborsClassifier and result.baseline is not knn and not hasattr(knn, "classes_")
    run = json.loads((result.run_dir / "run.json").read_text())
    assert run["baseline"] == name == result.metrics["baseline"] and {"baseline": [name]} in run["search"]["space"]
    board = (result.run_dir / "leaderboard.md").read_text()
    assert f"the best of 1 baseline configuration tried: {name} (test accuracy" in board
