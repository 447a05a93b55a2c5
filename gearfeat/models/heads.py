"""Dense classification heads trained on cached features, as scikit-learn-style estimators, and the protocol
(:class:`Head`) that the transfer pipeline needs of any head."""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from .._internal.errors import GearfeatError, InvalidArgumentError, check_seed, first_line, is_int, is_real
from ..features.cache import FeatureRows

_PREDICT_BATCH = 1024  # rows per batch where no gradient is computed (validation, prediction)


class Head(Protocol):
    """What ``train`` (and the winner of ``search``) needs of a head: an estimator that scikit-learn's ``clone``
    copies (``get_params``/``set_params``), whose ``fit`` builds ``model_``, a Keras model from features (N, D)
    to class probabilities, that is stitched behind the backbone into ``model.h5``.

    Before fitting: ``seed`` (set to the run's), ``learning_rate`` (the stitched model is compiled with it),
    ``validate()`` (raises on a bad parameter, before the extraction). ``fit(X, y, validation_data=(X_val, y_val),
    classes=range(n_classes))`` trains with outputs in the order of ``classes``; ``predict_proba(X)`` gives
    (N, n_classes). After fitting: ``model_``, ``history_`` (per-epoch lists, ``"loss"`` among them) and
    ``best_epoch_`` (1-based). :class:`DenseHead` is one; :func:`check_head` names what a head lacks.
    """

    seed: int
    learning_rate: float

    def get_params(self, deep: bool = True) -> dict[str, Any]: ...

    def set_params(self, **params: Any) -> Head: ...

    def validate(self) -> None: ...

    def fit(self, X: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            classes: Sequence | None = None) -> Head: ...

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


class StreamingHead(Head, Protocol):
    """A :class:`Head` that can also train on cache rows streamed from the HDF5 file (a split over the memory
    budget): ``fit_streamed`` as :meth:`DenseHead.fit_streamed`."""

    def fit_streamed(self, features: FeatureRows, indexes: np.ndarray, y: np.ndarray,
                     validation: tuple[np.ndarray, np.ndarray] | None = None, classes: Sequence | None = None,
                     window_bytes: int = 32 << 20) -> StreamingHead: ...


FITTED_MEMBERS = ("model_", "history_", "best_epoch_")
"""What a :class:`Head`'s ``fit`` leaves on it."""


def _members(protocol: type) -> tuple[str, ...]:
    """The attributes and public methods a protocol class (with its protocol bases) declares, in order."""
    names: dict[str, None] = {}
    for cls in reversed(protocol.__mro__):
        if Protocol in cls.__bases__ or cls is protocol:
            names.update(dict.fromkeys(getattr(cls, "__annotations__", {})))
            names.update(dict.fromkeys(name for name, value in vars(cls).items()
                                       if callable(value) and not name.startswith("_")))
    return tuple(names)


def check_head(head: Any, *, streamed: bool = False, fitted: bool = False) -> None:
    """Raise a GearfeatError naming every member of :class:`Head` (:class:`StreamingHead` when ``streamed``;
    also :data:`FITTED_MEMBERS` when ``fitted``) that ``head`` lacks, and a ``model_`` that is not a Keras model."""
    required = _members(StreamingHead if streamed else Head) + (FITTED_MEMBERS if fitted else ())
    attributes = {*Head.__annotations__, *FITTED_MEMBERS}
    missing = [name for name in required
               if not (hasattr(head, name) and (name in attributes or callable(getattr(head, name))))]
    name = type(head).__name__
    if missing:
        need = "a head" if not streamed else "a head trained on features streamed from the cache"
        raise GearfeatError(f"head {name} lacks {', '.join(missing)}: {need} needs "
                            f"{', '.join(required)} (see gearfeat.models.heads.Head)")
    if fitted and not isinstance(head.model_, keras.Model):
        raise GearfeatError(f"head {name}'s model_ is a {type(head.model_).__name__}, not a Keras model (features "
                            "to class probabilities, stitched behind the backbone)")


class DenseHead(ClassifierMixin, BaseEstimator):
    """A small dense network on pooled backbone features: ``fit`` / ``predict`` / ``predict_proba`` / ``score``.

    Early stopping watches the validation loss of ``fit``'s ``validation_data`` and restores the best
    weights; without ``validation_data`` every one of ``epochs`` runs (so pass a validation split to
    cross-validation too, e.g. ``cross_val_score(head, X, y, params={"validation_data": (X_val, y_val)})``).
    ``history_`` holds the per-epoch average training and validation loss and accuracy.
    """

    def __init__(self, hidden: Sequence[int] = (256,), dropout: float = 0.3, l2: float = 1e-4,
                 batch_norm: bool = False, learning_rate: float = 1e-3, batch_size: int = 64,
                 epochs: int = 60, patience: int = 8, seed: int = 0, verbose: int = 0):
        self.hidden = hidden
        self.dropout = dropout
        self.l2 = l2
        self.batch_norm = batch_norm
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.seed = seed
        self.verbose = verbose

    def validate(self) -> None:
        """Raise an InvalidArgumentError naming the first invalid parameter (``fit`` calls it first)."""
        check_seed(self.seed)
        checks = {
            "hidden": isinstance(self.hidden, Sequence) and not isinstance(self.hidden, str)
            and all(is_int(h, 1) for h in self.hidden),
            "dropout": is_real(self.dropout) and 0.0 <= self.dropout < 1.0,
            "l2": is_real(self.l2) and 0 <= self.l2 < math.inf,
            "learning_rate": is_real(self.learning_rate) and 0 < self.learning_rate < math.inf,
            "batch_norm": isinstance(self.batch_norm, (bool, np.bool_)),
            "batch_size": is_int(self.batch_size, 1),
            "epochs": is_int(self.epochs, 1),
            "patience": is_int(self.patience, 0),
            "verbose": is_int(self.verbose, 0),
        }
        for name, ok in checks.items():
            if not ok:
                raise InvalidArgumentError(f"invalid head parameter {name}={getattr(self, name)!r}", parameter=name)

    def build(self, n_features: int, n_classes: int) -> keras.Model:
        """The uncompiled head model: features -> [Dense -> (BatchNorm) -> ReLU -> Dropout]* -> softmax.

        Initial weights and dropout masks are seeded from ``seed`` layer by layer, not drawn from Python's
        global ``random`` (which other threads of the process, e.g. a dask worker's, may use meanwhile).
        """
        regularizer = keras.regularizers.l2(self.l2) if self.l2 else None
        kernel_seeds, dropout_seeds = self.layer_seeds()
        inputs = keras.Input((n_features,), name="features")
        x = inputs
        for i, units in enumerate(self.hidden):
            x = keras.layers.Dense(int(units), use_bias=not self.batch_norm, kernel_regularizer=regularizer,
                                   kernel_initializer=keras.initializers.GlorotUniform(kernel_seeds[i]),
                                   name=f"head_dense_{i}")(x)
            if self.batch_norm:
                x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
            x = keras.layers.Activation("relu", name=f"head_relu_{i}")(x)
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, seed=dropout_seeds[i], name=f"head_dropout_{i}")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer,
                                     kernel_initializer=keras.initializers.GlorotUniform(kernel_seeds[-1]),
                                     name="head_output")(x)
        return keras.Model(inputs, outputs, name="head")

    def layer_seeds(self) -> tuple[list[int], list[int]]:
        """The seeds of the kernel initializers (each hidden layer's, then the output's) and of the dropout
        layers (none without dropout), in the order ``build`` draws them from ``seed * 1000`` on."""
        seeds = itertools.count(int(self.seed) * 1000)
        kernels, dropouts = [], []
        for _ in self.hidden:
            kernels.append(next(seeds))
            if self.dropout:
                dropouts.append(next(seeds))
        return [*kernels, next(seeds)], dropouts

    def fit(self, X: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            classes: Sequence | None = None) -> "DenseHead":
        """Train on features ``X`` (N, D) and class labels ``y``; stop early on ``validation_data``.

        ``classes`` lists every label the head predicts, in the order of its outputs (default: the labels in
        ``y``, sorted); give it when the training labels may lack a class, e.g. ``range(len(class_names))``.
        """
        self.validate()
        X = _check_features(X)
        y = _check_labels(y, len(X))
        outputs = _check_classes(y, classes)
        y = _class_indexes(outputs, y, "y")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise InvalidArgumentError("validation_data must be a pair (features, labels)")
            X_val = _check_width(_check_features(validation_data[0]), X.shape[1], "validation_data")
            y_val = _class_indexes(outputs, _check_labels(validation_data[1], len(X_val)), "validation labels")
        validation = None if validation_data is None else _EagerValidation(X_val, y_val)
        batch_size, epochs = int(self.batch_size), int(self.epochs)
        return self._train(shuffled_batches(X, y, batch_size=batch_size, epochs=epochs, seed=int(self.seed)),
                           len(X), X.shape[1], outputs, validation)

    def fit_streamed(self, features: FeatureRows, indexes: np.ndarray, y: np.ndarray,
                     validation: tuple[np.ndarray, np.ndarray] | None = None, classes: Sequence | None = None,
                     window_bytes: int = 32 << 20) -> "DenseHead":
        """As :meth:`fit`, on the rows ``indexes`` of ``features`` (a cache view), streamed from the HDF5 file
        through ``tf.data`` a window of ``window_bytes`` at a time instead of held in memory; ``validation`` is
        ``(val_indexes, val_labels)``, read a window at a time at each epoch's end.

        Each epoch takes the windows in its own seeded order and shuffles the rows inside each
        (:meth:`FeatureRows.shuffled`): close to, not the same as, :meth:`fit`'s full shuffle.
        """
        self.validate()
        indexes = np.asarray(indexes, np.int64)
        y = _check_labels(y, len(indexes))
        outputs = _check_classes(y, classes)
        y = _class_indexes(outputs, y, "y")
        checked = None
        if validation is not None:
            val_indexes = np.asarray(validation[0], np.int64)
            y_val = _class_indexes(outputs, _check_labels(validation[1], len(val_indexes)), "validation labels")
            checked = _EagerValidation(None, None, windows=lambda: (
                (_check_features(block), y_val[at]) for at, block in
                features.windows(val_indexes, window_bytes=window_bytes)))
        batch_size, epochs, dim = int(self.batch_size), int(self.epochs), features.dim

        def passes():
            for epoch in range(epochs):
                yield from streamed_batches(features, indexes, y, batch_size=batch_size, seed=int(self.seed),
                                            epoch=epoch, window_bytes=window_bytes)

        data = tf.data.Dataset.from_generator(passes, output_signature=(
            tf.TensorSpec((None, dim), tf.float32), tf.TensorSpec((None,), tf.int64))).prefetch(2)
        return self._train(data, len(indexes), dim, outputs, checked)

    def _train(self, data: tf.data.Dataset, n: int, n_features: int, outputs: np.ndarray,
               validation: "_EagerValidation | None") -> "DenseHead":
        """Build and train the head on ``data`` (``epochs`` passes over ``n`` rows, in batches), stopping early on
        the ``validation`` loss when given."""
        self.classes_, self.n_features_in_ = outputs, n_features
        keras.utils.set_random_seed(self.seed)
        self.model_ = self.build(n_features, len(self.classes_))
        batch_size, epochs = int(self.batch_size), int(self.epochs)
        steps = -(-n // batch_size)
        # one graph call per epoch (steps_per_execution) on an in-graph tf.data pipeline: the per-step
        # Python round trips of fit(numpy) cost more than this small network's arithmetic
        compile_model(self.model_, self.learning_rate, steps_per_execution=steps, fused_adam=True)
        callbacks = []
        if validation is not None:
            callbacks = [validation,
                         keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(self.patience),
                                                       restore_best_weights=True)]
        # one iterator for all epochs (steps_per_epoch given): each epoch is its own seeded permutation
        fitted = self.model_.fit(data, epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                                 verbose=self.verbose)
        self.history_ = {k: [float(v) for v in values] for k, values in fitted.history.items()}
        # EarlyStopping restores the best epoch's weights when training ends, stopped early or not
        self.best_epoch_ = callbacks[-1].best_epoch + 1 if callbacks else len(self.history_["loss"])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, number of classes), columns in the order of ``classes_``."""
        check_is_fitted(self, "model_")
        return _forward(self.model_, _check_width(_check_features(X), self.n_features_in_, "X"))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class labels (N,): values of ``classes_``."""
        index = self.predict_proba(X).argmax(axis=1)  # first: it checks that the head is fitted
        return self.classes_[index]

def compile_model(model: keras.Model, learning_rate: float, *, steps_per_execution: int = 1,
                  for_training: bool = True, fused_adam: bool = False) -> keras.Model:
    """Compile a classifier with Adam, sparse categorical cross-entropy and accuracy (keywords: Keras 3).

    ``for_training`` also creates the optimizer's, the loss's and the metrics' variables now, eagerly on one
    row of zeros. Keras would otherwise create them inside ``fit``'s first trace, and TensorFlow traces a
    function that creates variables twice: for a small head the second trace costs as much as training it.
    ``fused_adam`` trains with :class:`FusedAdam` (same arithmetic, fewer kernels); models that are saved
    keep Keras's own Adam, so that their files load without gearfeat.
    """
    optimizer = (FusedAdam if fused_adam else keras.optimizers.Adam)(learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=steps_per_execution)
    if for_training:
        x = [np.zeros((1, *tensor.shape[1:]), tensor.dtype) for tensor in model.inputs]
        x = x[0] if len(x) == 1 else x
        y = np.zeros((1,), np.int64)
        y_pred = model(x, training=False)
        model.compute_loss(x, y, y_pred)
        model.compute_metrics(x, y, y_pred, sample_weight=None)
        model.reset_metrics()
        model.optimizer.build(model.trainable_variables)
    return model


@keras.saving.register_keras_serializable(package="gearfeat")
class FusedAdam(keras.optimizers.Adam):
    """Keras's Adam, each variable updated by TensorFlow's one fused kernel (``ResourceApplyAdam``) instead
    of about ten elementwise operations, each a pass over the variable: the same update (equal to Keras's
    Adam within float rounding, tested), and a fifth less time for the default dense head here, whose
    1,280 x 256 kernel the unfused update walks ten times a step. AMSGrad and sparse gradients take Keras's
    own update."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        index = self._get_variable_index(variable)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].value.handle, v=self._velocities[index].value.handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def _probabilities(model: keras.Model, X: np.ndarray) -> np.ndarray:
    """``model(X)`` in eager calls of up to _PREDICT_BATCH rows: for a network this small, tracing Keras's
    predict function costs more than the arithmetic."""
    return np.concatenate([keras.ops.convert_to_numpy(model(X[i:i + _PREDICT_BATCH], training=False))
                           for i in range(0, max(len(X), 1), _PREDICT_BATCH)])


def _forward(model: keras.Model, X: np.ndarray) -> np.ndarray:
    """The head's inference pass in float64 NumPy from its weights: each row's probabilities do not depend on
    the other rows of the call (float32 kernels sum in an order that depends on a row's place in its tile)."""
    x = X.astype(np.float64)
    for layer in model.layers[1:]:
        weights = [np.asarray(w, dtype=np.float64) for w in layer.get_weights()]
        if isinstance(layer, keras.layers.Dense):
            x = x @ weights[0] + (weights[1] if layer.use_bias else 0.0)
            if layer.activation.__name__ == "softmax":
                x = np.exp(x - x.max(axis=1, keepdims=True))
                x /= x.sum(axis=1, keepdims=True)
        elif isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = weights
            x = (x - mean) / np.sqrt(variance + layer.epsilon) * gamma + beta
        elif isinstance(layer, keras.layers.Activation) and layer.activation.__name__ == "relu":
            x = np.maximum(x, 0.0)
        elif not isinstance(layer, keras.layers.Dropout):
            raise TypeError(f"no inference rule for head layer {layer.name!r}")
    return x


class _EagerValidation(keras.callbacks.Callback):
    """Adds ``val_loss`` and ``val_accuracy`` to each epoch's logs, as ``evaluate`` would (cross-entropy
    plus the regularization losses; sparse categorical accuracy), from eager calls: much cheaper here than
    fit's traced validation pass. Listed before the callbacks that read them (EarlyStopping; History
    comes last)."""

    def __init__(self, X: np.ndarray | None, y: np.ndarray | None,
                 windows: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]] | None = None):
        super().__init__()
        #: the validation (features, labels): ``(X, y)``, or the windows ``windows()`` yields (a streamed fit)
        self.windows = windows or (lambda: [(X, y)])

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        losses, right = [], []
        for X, y in self.windows():
            proba = _probabilities(self.model, X)
            losses.append(keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(y, proba)))
            right.append(proba.argmax(axis=1) == y)
        logs["val_loss"] = float(np.mean(np.concatenate(losses)) + sum(float(r) for r in self.model.losses))
        logs["val_accuracy"] = float(np.mean(np.concatenate(right)))


def streamed_batches(features: FeatureRows, indexes: np.ndarray, y: np.ndarray, *, batch_size: int, seed: int,
                     epoch: int, window_bytes: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass (``epoch``) over the positions ``indexes`` of ``features`` and their labels ``y`` in batches of
    ``batch_size`` (the last one shorter), read from the cache a window at a time in the order
    :meth:`FeatureRows.shuffled` draws from ``(seed, epoch)``; each window is checked finite. What a streamed
    :meth:`DenseHead.fit_streamed` and a streamed :class:`~gearfeat.models.stacked.StackedHeads` train on."""
    carry_x, carry_y = np.zeros((0, features.dim), np.float32), np.zeros(0, np.int64)
    for at, block in features.shuffled(indexes, seed=int(seed) * 100003 + int(epoch), window_bytes=window_bytes):
        carry_x, carry_y = np.concatenate([carry_x, _check_features(block)]), np.concatenate([carry_y, y[at]])
        while len(carry_x) >= batch_size:
            yield carry_x[:batch_size], carry_y[:batch_size]
            carry_x, carry_y = carry_x[batch_size:], carry_y[batch_size:]
    if len(carry_x):
        yield carry_x, carry_y


def shuffled_batches(X: np.ndarray, y: np.ndarray, *, batch_size: int, epochs: int, seed: int) -> tf.data.Dataset:
    """``epochs`` passes over ``(X, y)`` in batches of ``batch_size``, each pass in its own order, a
    permutation drawn from ``(seed, epoch)``: the same seed gives the same batches.

    Every batch is one gather of rows, not ``batch_size`` single rows shuffled and stacked: tf.data's
    per-row work cost about 0.7 ms a batch of 64 here, more than twice the default head's arithmetic.
    """
    features, labels = tf.constant(X), tf.constant(y)
    n, steps = len(X), -(-len(X) // batch_size)

    def epoch(index: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         seed=tf.stack([tf.constant(seed, tf.int64), index]))

        def batch(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            rows = order[step * batch_size:(step + 1) * batch_size]
            return tf.gather(features, rows), tf.gather(labels, rows)

        return tf.data.Dataset.range(steps).map(batch)

    return tf.data.Dataset.range(epochs).flat_map(epoch).prefetch(2)


def _check_features(X) -> np.ndarray:
    """``X`` as a finite float32 array (N >= 1, D >= 1), or an InvalidArgumentError saying what is wrong."""
    try:  # scikit-learn's check refuses sparse and complex input with its usual messages
        X = np.asarray(check_array(X, accept_sparse=False, dtype=None, ensure_2d=False, allow_nd=True,
                                   ensure_all_finite=False, ensure_min_samples=0), dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"features must be a dense array of real numbers (N, D): "
                                   f"{first_line(exc)}") from None
    if X.ndim != 2:
        raise InvalidArgumentError(f"expected features (N, D), got shape {X.shape}: Reshape your data, "
                                   "X.reshape(1, -1) for one sample or X.reshape(-1, 1) for one feature")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InvalidArgumentError(f"Found array with {X.shape[0]} sample(s) and {X.shape[1]} feature(s) "
                                   f"(shape={X.shape}) while a minimum of 1 is required.")
    if not np.all(np.isfinite(X)):
        row = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise InvalidArgumentError(f"features hold NaN or infinite values (first in row {row}); check the data "
                                   "(or the cache) they come from")
    return X


def _check_width(X: np.ndarray, width: int, name: str) -> np.ndarray:
    if X.shape[1] != width:
        raise InvalidArgumentError(f"{name} has {X.shape[1]} features, but DenseHead is expecting {width} features "
                                   "as input (the width it was fitted on)")
    return X


def _check_labels(y, n: int) -> np.ndarray:
    """``y`` as a 1-D array of ``n`` class labels; a column vector is flattened, with scikit-learn's warning."""
    try:
        y = column_or_1d(y, warn=True)
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            raise ValueError("Input y contains NaN or infinity; labels must be classes")
        check_classification_targets(y)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"bad labels: {first_line(exc)}") from None
    if len(y) != n:
        raise InvalidArgumentError(f"expected one label per row of the features ({n}), got {len(y)}")
    return y


def _check_classes(y: np.ndarray, classes: Sequence | None) -> np.ndarray:
    """The head's classes: ``classes`` (checked) or the labels in ``y``, sorted."""
    if classes is None:
        found = np.unique(y)
        if len(found) < 2:
            raise InvalidArgumentError(f"the labels hold one class ({found.tolist()[0]!r}); a classifier needs at "
                                       "least 2")
        return found
    given = np.asarray(classes)
    if given.ndim != 1 or len(given) < 2 or len(np.unique(given)) != len(given):
        raise InvalidArgumentError(f"classes must list 2 or more labels, each once, got {classes!r:.80}")
    return given


def _class_indexes(classes: np.ndarray, y: np.ndarray, name: str) -> np.ndarray:
    """The position of each label of ``y`` in ``classes`` (the head's output index)."""
    lookup = {label: i for i, label in enumerate(classes.tolist())}
    try:
        return np.array([lookup[label] for label in y.tolist()], dtype=np.int64)
    except (KeyError, TypeError):
        unknown = next(label for label in y.tolist() if label not in lookup)
        raise InvalidArgumentError(f"{name} holds the label {unknown!r}, which is not among the classes "
                                   f"{classes.tolist()!r:.80}") from None
