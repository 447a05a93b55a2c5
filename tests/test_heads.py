"""DenseHead: the fast training path (tf.data pipeline, one graph call per epoch) learns and is reproducible."""
import keras
import numpy as np
import pytest

from sklearn.utils.estimator_checks import parametrize_with_checks

from gearfeat._internal.errors import GearfeatError, InvalidArgumentError
from gearfeat.models.heads import DenseHead, _EagerValidation, check_head


def _blobs(n_per_class=60, dim=32, classes=3, seed=0):
    """Gaussian blobs around fixed centres; ``seed`` draws other points around the same centres."""
    centers = np.random.default_rng(42).normal(0, 3, (classes, dim))
    rng = np.random.default_rng(seed)
    X = np.concatenate([c + rng.normal(0, 1, (n_per_class, dim)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(classes), n_per_class)
    order = rng.permutation(len(y))
    return X[order], y[order]


def test_head_learns_separable_classes_with_a_partial_last_batch():
    X, y = _blobs()
    Xv, yv = _blobs(n_per_class=20, seed=1)
    head = DenseHead(hidden=(16,), batch_size=50, epochs=15, patience=15).fit(X, y, validation_data=(Xv, yv))
    assert head.score(Xv, yv) >= 0.95  # features and labels stay aligned through the shuffling pipeline
    assert len(head.history_["loss"]) == 15 and len(head.history_["val_accuracy"]) == 15
    assert head.history_["loss"][-1] < head.history_["loss"][0]


def test_same_seed_same_training_other_seed_other_training():
    X, y = _blobs()
    runs = [DenseHead(hidden=(8,), epochs=3, seed=s).fit(X, y).history_["loss"] for s in (0, 0, 1)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_early_stopping_restores_the_best_epoch():
    X, y = _blobs()
    X_val, y_val = _blobs(seed=2)
    y_val = np.random.default_rng(3).permutation(y_val)  # wrong labels: validation loss rises as the head learns
    head = DenseHead(hidden=(8,), epochs=30, patience=2).fit(X, y, validation_data=(X_val, y_val))
    best = int(np.argmin(head.history_["val_loss"])) + 1
    assert head.best_epoch_ == best
    assert len(head.history_["loss"]) == best + 2  # stopped after the best epoch...
    loss = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y_val, head.predict_proba(X_val)))
    restored = float(np.mean(loss)) + sum(float(r) for r in head.model_.losses)
    assert restored == pytest.approx(min(head.history_["val_loss"]), rel=1e-5)  # ...and has its weights back
    assert restored < head.history_["val_loss"][-1]


@pytest.mark.parametrize("param", [{"batch_size": 0}, {"epochs": 0}, {"dropout": 1.0}, {"hidden": None},
                                   {"hidden": 256}, {"hidden": (True,)}, {"dropout": None}, {"l2": "0.1"},
                                   {"learning_rate": True}, {"batch_norm": "no"}, {"batch_size": 2.9},
                                   {"epochs": True}, {"patience": 1.5}, {"verbose": "loud"},
                                   {"l2": float("inf")}, {"l2": -1.0}, {"learning_rate": 0.0},
                                   {"learning_rate": float("inf")}, {"patience": -1}, {"dropout": -0.1}])
def test_invalid_parameters_are_named(param):
    X, y = _blobs(n_per_class=5)
    name, value = next(iter(param.items()))
    with pytest.raises(InvalidArgumentError, match=f"^invalid head parameter {name}="):
        DenseHead(**param).fit(X, y)


@pytest.mark.parametrize("labels, classes, message", [
    (lambda y: np.where(y == 1, 1.5, y), None, "bad labels: Unknown label type: continuous"),
    (lambda y: np.where(y == 1, np.nan, y), None, "bad labels: Input y contains NaN or infinity"),
    (lambda y: np.zeros_like(y), None, r"the labels hold one class \(0\); a classifier needs at least 2"),
    (lambda y: y[:-1], None, r"expected one label per row of the features \(15\), got 14"),
    (lambda y: np.stack([y, y], axis=1), None, "bad labels: y should be a 1d array"),
    (lambda y: y, [0, 1], r"y holds the label 2, which is not among the classes \[0, 1\]"),
    (lambda y: y, [0, 1, 1, 2], "classes must list 2 or more labels, each once"),
    (lambda y: y, [[0, 1, 2]], "classes must list 2 or more labels, each once"),
    (lambda y: y, [], r"classes must list 2 or more labels, each once, got \[\]"),
])
def test_bad_labels_are_refused_not_truncated(labels, classes, message):
    X, y = _blobs(n_per_class=5)
    with pytest.raises(InvalidArgumentError, match=message):
        DenseHead(epochs=1).fit(X, labels(y), classes=classes)


def test_patience_zero_stops_at_the_first_epoch_without_improvement():
    X, y = _blobs(n_per_class=5)
    X_val, y_val = X, np.random.default_rng(3).permutation(y)  # wrong labels: validation gets worse early
    head = DenseHead(hidden=(8,), epochs=30, patience=0).fit(X, y, validation_data=(X_val, y_val))
    assert len(head.history_["loss"]) == head.best_epoch_ + 1 < 30


def test_any_labels_are_classes_and_classes_fix_the_outputs():
    X, y = _blobs(n_per_class=10)
    names = np.array(["boot", "rope", "tent"])
    head = DenseHead(hidden=(8,), epochs=20, learning_rate=1e-2).fit(X, names[y])
    assert list(head.classes_) == ["boot", "rope", "tent"]
    assert set(head.predict(X)) <= set(names) and head.score(X, names[y]) > 0.9
    indexes = DenseHead(hidden=(8,), epochs=20, learning_rate=1e-2).fit(X, y - 1)  # negative labels are labels
    assert list(indexes.classes_) == [-1, 0, 1] and indexes.score(X, y - 1) > 0.9
    wide = DenseHead(hidden=(8,), epochs=1).fit(X, y, classes=range(5))  # a class the training split lacks
    assert wide.predict_proba(X).shape == (len(X), 5) and list(wide.classes_) == [0, 1, 2, 3, 4]
    with pytest.raises(InvalidArgumentError, match="validation labels holds the label 'hat'"):
        DenseHead(epochs=1).fit(X, names[y], validation_data=(X, np.where(y == 0, "hat", names[y])))


def test_non_finite_features_and_mismatched_validation_are_refused():
    X, y = _blobs(n_per_class=5)
    bad = X.copy()
    bad[4, 2] = np.nan
    with pytest.raises(InvalidArgumentError, match=r"features hold NaN or infinite values \(first in row 4\)"):
        DenseHead(epochs=1).fit(bad, y)
    with pytest.raises(InvalidArgumentError, match="features hold NaN"):
        DenseHead(epochs=1).fit(X, y, validation_data=(np.where(np.isnan(bad), np.inf, bad), y))
    with pytest.raises(InvalidArgumentError, match=f"validation_data has 10 features, but DenseHead is expecting "
                                                   f"{X.shape[1]} features"):
        DenseHead(epochs=1).fit(X, y, validation_data=(X[:, :10], y))
    with pytest.raises(InvalidArgumentError, match="validation_data must be a pair"):
        DenseHead(epochs=1).fit(X, y, validation_data=X)
    with pytest.raises(InvalidArgumentError, match="Reshape your data"):
        DenseHead(epochs=1).fit(X[0], y[:1])


def test_predicting_follows_scikit_learn_conventions():
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError
    X, y = _blobs(n_per_class=5)
    head = DenseHead(hidden=(4,), epochs=1)
    with pytest.raises(NotFittedError):
        head.predict(X)
    head.fit(X, y)
    assert head.n_features_in_ == X.shape[1] and list(head.classes_) == [0, 1, 2]
    with pytest.raises(InvalidArgumentError, match=f"X has 10 features, but DenseHead is expecting {X.shape[1]}"):
        head.predict(X[:, :10])
    with pytest.raises(ValueError, match="features hold NaN"):  # an InvalidArgumentError is a ValueError too
        head.predict(np.full_like(X, np.nan))
    assert not hasattr(clone(head), "model_")


@parametrize_with_checks([DenseHead(hidden=(16,), epochs=30, learning_rate=1e-2)])
def test_scikit_learn_estimator_checks(estimator, check):
    """scikit-learn's own checks of a classifier: input validation, error types and messages, labels of any
    type, cloning, pickling, fitting twice, predictions and probabilities that agree."""
    check(estimator)


def test_validation_logs_equal_keras_evaluate():
    X, y = _blobs(n_per_class=10)
    Xv, yv = _blobs(n_per_class=400, seed=3)  # more rows than one prediction batch
    head = DenseHead(hidden=(8,), epochs=2, patience=5).fit(X, y, validation_data=(Xv, yv))
    logs = {}
    validation = _EagerValidation(Xv, yv)
    validation.set_model(head.model_)
    validation.on_epoch_end(0, logs)
    expected = head.model_.evaluate(Xv, yv, verbose=0, return_dict=True)
    assert logs["val_loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert logs["val_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-6)
    np.testing.assert_allclose(head.predict_proba(Xv), head.model_.predict(Xv, verbose=0), atol=1e-6)


@pytest.fixture
def traced(monkeypatch):
    """The names of the models whose training step gets traced, once per trace."""
    import keras
    names = []
    train_step = keras.Model.train_step

    def counting(self, data):
        names.append(self.name)
        return train_step(self, data)

    monkeypatch.setattr(keras.Model, "train_step", counting)
    return names


@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_step_is_traced_once(traced, batch_norm):
    """The optimizer's and metrics' variables exist before fit; created inside its first trace instead,
    TensorFlow would trace the training step a second time."""
    X, y = _blobs(n_per_class=20)
    DenseHead(hidden=(8,), batch_norm=batch_norm, epochs=3, patience=5).fit(X, y, validation_data=(X, y))
    assert traced == ["head"]


def test_compiled_image_model_trains_with_one_trace(traced):
    """compile_model prepares any functional model (the CNN's and fine-tuning's too), not just heads."""
    import keras

    from gearfeat.models.heads import compile_model
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model = compile_model(keras.Model(inputs, outputs, name="images"), 1e-3)
    images = np.random.default_rng(0).uniform(0, 1, (10, 8, 8, 3)).astype(np.float32)
    history = model.fit(images, np.arange(10) % 3, epochs=2, batch_size=4, verbose=0)
    assert traced == ["images"]
    assert np.isfinite(history.history["loss"]).all()


def test_shuffled_batches_are_a_seeded_permutation_per_epoch():
    from gearfeat.models.heads import shuffled_batches
    X = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    y = np.arange(23)

    def epochs(seed):
        batches = [(bx.numpy(), by.numpy()) for bx, by in shuffled_batches(X, y, batch_size=5, epochs=3, seed=seed)]
        assert [len(by) for _, by in batches] == [5, 5, 5, 5, 3] * 3
        assert all(np.array_equal(bx[:, 0], 2 * by) for bx, by in batches)  # rows stay with their labels
        return [np.concatenate([by for _, by in batches[i * 5:(i + 1) * 5]]) for i in range(3)]

    first = epochs(0)
    assert all(sorted(order) == list(range(23)) for order in first)  # every row once an epoch
    assert not np.array_equal(first[0], first[1])  # each epoch in its own order
    assert all(np.array_equal(a, b) for a, b in zip(first, epochs(0)))
    assert not np.array_equal(first[0], epochs(1)[0])


@pytest.mark.parametrize("amsgrad", [False, True])
def test_fused_adam_updates_as_keras_adam(amsgrad):
    from gearfeat.models.heads import FusedAdam
    X, y = _blobs(n_per_class=20)
    weights = []
    for optimizer in (keras.optimizers.Adam, FusedAdam):
        keras.utils.set_random_seed(0)
        model = DenseHead(hidden=(16,), dropout=0.0).build(X.shape[1], 3)
        model.compile(optimizer=optimizer(0.01, amsgrad=amsgrad), loss="sparse_categorical_crossentropy")
        model.fit(X, y, batch_size=20, epochs=3, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    start = DenseHead(hidden=(16,), dropout=0.0).build(X.shape[1], 3)
    for keras_adam, fused, initial in zip(*weights, start.get_weights()):
        assert not np.allclose(keras_adam, initial)
        np.testing.assert_allclose(fused, keras_adam, rtol=1e-5, atol=1e-6)


def test_baseline_settings_are_named():
    from gearfeat.models.baseline import make_baseline
    for kind, C, seed, message in ((["logreg"], 1.0, 0, r"baseline \['logreg'\] is not a scikit-learn classifier "
                                                        r"\(it has no fit or predict\)"),
                                   ("forest", 1.0, 0, r"^unknown baseline 'forest'; choose one of: logreg, linear_svc, svc$"),
                                   ("logreg", 0.0, 0, "^baseline_c must be a finite number above 0, got 0.0$"),
                                   ("svc", 1.0, -1, "seed must be an integer from 0 to 4294967295, got -1")):
        with pytest.raises(GearfeatError, match=message):
            make_baseline(kind, C, seed=seed)


def test_dense_head_satisfies_the_head_protocol_and_check_head_names_what_a_head_lacks():
    head = DenseHead(hidden=(4,), epochs=1)
    check_head(head, streamed=True)
    with pytest.raises(GearfeatError, match=r"^head DenseHead lacks model_, history_, best_epoch_: a head needs "):
        check_head(head, fitted=True)  # not fitted yet
    X, y = np.random.default_rng(0).standard_normal((20, 3)).astype(np.float32), np.arange(20) % 2
    head.fit(X, y, validation_data=(X, y))
    check_head(head, streamed=True, fitted=True)
    head.model_ = "weights.h5"
    with pytest.raises(GearfeatError, match=r"^head DenseHead's model_ is a str, not a Keras model"):
        check_head(head, fitted=True)

    class Proba:
        seed, learning_rate = 0, 1e-3

        def predict_proba(self, X):
            return X

    with pytest.raises(GearfeatError, match=r"^head Proba lacks get_params, set_params, validate, fit: a head needs "
                                            r"seed, learning_rate, get_params, set_params, validate, fit, "
                                            r"predict_proba \(see gearfeat.models.heads.Head\)$"):
        check_head(Proba())
