"""StackedHeads: many DenseHead configurations trained as one model, each as it would train alone."""
import numpy as np
import pytest

from gearfeat._internal.errors import InvalidArgumentError
from gearfeat.models.heads import DenseHead, check_head
from gearfeat.models.stacked import StackedHeads, plan_stacks, stack_bytes


@pytest.fixture(scope="module")
def problem():
    """4 overlapping Gaussian classes in 24 dimensions: 300 training rows, 200 validation rows."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 1.0, (4, 24))
    y = rng.integers(0, 4, 500)
    X = (centres[y] + rng.normal(0, 1.4, (500, 24))).astype(np.float32)
    return X[:300], y[:300], X[300:], y[300:]


CONFIGS = [  # the arithmetic of DenseHead.fit exactly, dropout masks included: only float rounding may differ
    dict(hidden=(12,), dropout=0.0, l2=0.0, batch_norm=False, learning_rate=1e-3, patience=2),
    dict(hidden=(12,), dropout=0.0, l2=1e-3, batch_norm=False, learning_rate=3e-2, patience=1),
    dict(hidden=(12,), dropout=0.0, l2=1e-4, batch_norm=True, learning_rate=3e-3, patience=0, seed=4),
    dict(hidden=(12,), dropout=0.5, l2=1e-4, batch_norm=False, learning_rate=3e-3, patience=3, seed=1),
    dict(hidden=(12,), dropout=0.2, l2=0.0, batch_norm=True, learning_rate=1e-2, patience=2, seed=2),
    dict(hidden=(12,), dropout=0.3, l2=0.0, batch_norm=False, learning_rate=3e-3, patience=3, seed=1),  # seed 1's numbers
]


def _alone(spec: DenseHead, problem) -> DenseHead:
    X, y, X_val, y_val = problem
    return DenseHead(**spec.get_params()).fit(X, y, validation_data=(X_val, y_val))


def test_a_stacked_head_trains_as_it_would_alone(problem):
    X, y, X_val, y_val = problem
    specs = [DenseHead(**params, batch_size=32, epochs=25) for params in CONFIGS]
    stack = StackedHeads(specs).fit(X, y, validation_data=(X_val, y_val))
    for i, spec in enumerate(specs):
        alone = _alone(spec, problem)
        history = stack.histories_[i]
        assert len(history["val_loss"]) == len(alone.history_["val_loss"])  # stopped at the same epoch
        np.testing.assert_allclose(history["val_loss"], alone.history_["val_loss"], rtol=2e-4)
        np.testing.assert_allclose(history["val_accuracy"], alone.history_["val_accuracy"], atol=0.011)
        assert stack.best_epochs_[i] == alone.best_epoch_
        np.testing.assert_allclose(stack.head(i).predict_proba(X_val), alone.predict_proba(X_val), atol=2e-4)
    assert len(set(len(h["loss"]) for h in stack.histories_)) > 1  # the heads stopped at different epochs


def test_two_hidden_layers_with_dropout_train_as_alone(problem):
    """Each Dropout layer has its own seed: the stack draws the masks of both layers as Keras does."""
    X, y, X_val, y_val = problem
    spec = DenseHead(hidden=(16, 8), dropout=0.3, l2=1e-4, learning_rate=3e-3, batch_size=64, epochs=8, seed=5)
    stack = StackedHeads([spec, DenseHead(**{**spec.get_params(), "dropout": 0.0})]).fit(
        X, y, validation_data=(X_val, y_val))
    np.testing.assert_allclose(stack.histories_[0]["val_loss"], _alone(spec, problem).history_["val_loss"], rtol=2e-4)


def test_a_head_does_not_depend_on_its_stack(problem):
    X, y, X_val, y_val = problem
    specs = [DenseHead(hidden=(12,), dropout=rate, batch_size=32, epochs=6, seed=seed)
             for rate, seed in ((0.3, 0), (0.5, 1), (0.3, 2))]
    together = StackedHeads(specs).fit(X, y, validation_data=(X_val, y_val))
    alone = StackedHeads(specs[1:2]).fit(X, y, validation_data=(X_val, y_val))
    np.testing.assert_allclose(together.histories_[1]["val_loss"], alone.histories_[0]["val_loss"], rtol=1e-5)
    assert together.histories_[0]["val_loss"] != together.histories_[2]["val_loss"]  # seeds differ


def test_no_hidden_layer_and_no_validation(problem):
    X, y, X_val, y_val = problem
    specs = [DenseHead(hidden=(), epochs=4, batch_size=64, learning_rate=lr) for lr in (1e-2, 1e-3)]
    stack = StackedHeads(specs).fit(X, y)
    assert [len(h["loss"]) for h in stack.histories_] == [4, 4] and stack.best_epochs_ == [4, 4]
    alone = DenseHead(**specs[0].get_params()).fit(X, y)
    np.testing.assert_allclose(stack.head(0).predict_proba(X_val), alone.predict_proba(X_val), atol=2e-4)
    assert stack.predict_proba(X_val).shape == (2, len(X_val), 4)


def test_a_sliced_head_is_an_ordinary_fitted_dense_head(problem):
    X, y, X_val, y_val = problem
    labels = np.array(["a", "b", "c", "d"])[y]
    stack = StackedHeads([DenseHead(hidden=(8, 6), batch_norm=bn, epochs=3) for bn in (False, True)])
    stack.fit(X, labels, validation_data=(X_val, np.array(["a", "b", "c", "d"])[y_val]))
    for i in range(2):
        head = stack.head(i)
        assert head.get_params() == stack.heads[i].get_params()
        np.testing.assert_allclose(head.predict_proba(X_val), stack.predict_proba(X_val)[i], atol=1e-5)
        assert list(head.classes_) == ["a", "b", "c", "d"] and head.predict(X_val[:2]).dtype.kind == "U"
        assert head.history_ == stack.histories_[i] and head.best_epoch_ == stack.best_epochs_[i]
        check_head(head, streamed=True, fitted=True)  # a fitted Head (search's winner goes to fit_and_save as one)


@pytest.mark.parametrize("heads, message", [
    ([], "a stack needs at least one head"),
    ([DenseHead(hidden=(8,)), DenseHead(hidden=(4,))], "the heads of a stack share hidden and batch_size"),
    ([DenseHead(batch_size=8), DenseHead(batch_size=16)], "the heads of a stack share hidden and batch_size"),
    ([DenseHead(dropout=1.5)], "invalid head parameter dropout=1.5"),
    (["head"], "a stack holds DenseHead instances"),
])
def test_bad_stacks_are_one_clear_error(problem, heads, message):
    X, y, _, _ = problem
    with pytest.raises(InvalidArgumentError, match=message):
        StackedHeads(heads).fit(X, y)


def test_unfitted_stack_says_so(problem):
    with pytest.raises(InvalidArgumentError, match="not fitted yet"):
        StackedHeads([DenseHead()]).head(0)


def test_plan_stacks_groups_by_shape_and_splits_by_budget():
    heads = [DenseHead(hidden=h, batch_size=b) for h in ((256,), (), (256,)) for b in (64, 128)] * 2
    plan = plan_stacks(heads, n_features=1280, n_classes=5)
    assert sorted(map(sorted, plan)) == [[0, 4, 6, 10], [1, 5, 7, 11], [2, 8], [3, 9]]
    one = stack_bytes((256,), 1, 1280, 5, 64)
    assert stack_bytes((256,), 4, 1280, 5, 64) > 3 * one
    split = plan_stacks(heads, n_features=1280, n_classes=5, budget=int(2.5 * one))
    assert sorted(i for stack in split for i in stack) == list(range(12))
    assert all(stack_bytes(heads[s[0]].hidden, len(s), 1280, 5, heads[s[0]].batch_size) <= 2.5 * one
               for s in split)
    assert [len(s) for s in split if heads[s[0]].hidden == (256,)] == [2, 2, 2, 2]
    assert len(plan_stacks(heads[:1], n_features=1280, n_classes=5, budget=1)) == 1  # one head over budget


def test_select_keeps_the_chosen_heads(problem):
    X, y, X_val, y_val = problem
    stack = StackedHeads([DenseHead(hidden=(8,), epochs=3, learning_rate=lr) for lr in (1e-2, 1e-3, 3e-3)])
    stack.fit(X, y, validation_data=(X_val, y_val))
    part = stack.select([2, 0])
    # the same weights; a product over fewer heads may round differently
    np.testing.assert_allclose(part.predict_proba(X_val), stack.predict_proba(X_val)[[2, 0]], rtol=1e-5, atol=1e-6)
    assert part.head(0).learning_rate == 3e-3 and part.histories_[1] == stack.histories_[0]
