"""Dense classification heads trained on cached features, as scikit-learn-style estimators."""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .errors import GearfeatError, check_seed, is_int, is_real

_PREDICT_BATCH = 1024  # rows per batch where no gradient is computed (validation, prediction)


class DenseHead(ClassifierMixin, BaseEstimator):
    """A small dense network on pooled backbone features: ``fit`` / ``predict`` / ``predict_proba`` / ``score``.

    Early stopping watches the validation loss and restores the best weights; ``history_`` holds the
    per-epoch average training and validation loss and accuracy.
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
        """Raise a GearfeatError naming the first invalid parameter (``fit`` calls it first)."""
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
                raise GearfeatError(f"invalid head parameter {name}={getattr(self, name)!r}")

    def build(self, n_features: int, n_classes: int) -> keras.Model:
        """The uncompiled head model: features -> [Dense -> (BatchNorm) -> ReLU -> Dropout]* -> softmax.

        Initial weights and dropout masks are seeded from ``seed`` layer by layer, not drawn from Python's
        global ``random`` (which other threads of the process, e.g. a dask worker's, may use meanwhile).
        """
        regularizer = keras.regularizers.l2(self.l2) if self.l2 else None
        seeds = itertools.count(int(self.seed) * 1000)
        inputs = keras.Input((n_features,), name="features")
        x = inputs
        for i, units in enumerate(self.hidden):
            x = keras.layers.Dense(int(units), use_bias=not self.batch_norm, kernel_regularizer=regularizer,
                                   kernel_initializer=keras.initializers.GlorotUniform(next(seeds)),
                                   name=f"head_dense_{i}")(x)
            if self.batch_norm:
                x = keras.layers.BatchNormalization(name=f"head_bn_{i}")(x)
            x = keras.layers.Activation("relu", name=f"head_relu_{i}")(x)
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, seed=next(seeds), name=f"head_dropout_{i}")(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", kernel_regularizer=regularizer,
                                     kernel_initializer=keras.initializers.GlorotUniform(next(seeds)),
                                     name="head_output")(x)
        return keras.Model(inputs, outputs, name="head")

    def fit(self, X: np.ndarray, y: np.ndarray, validation_data: tuple[np.ndarray, np.ndarray] | None = None,
            n_classes: int | None = None) -> "DenseHead":
        """Train on features ``X`` (N, D) and integer labels ``y``; stop early on ``validation_data``."""
        self.validate()
        X, y = _check_xy(X, y)
        if n_classes is None:
            n_classes = int(y.max()) + 1
        elif not is_int(n_classes, 2):
            raise GearfeatError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if n_classes < 2:
            raise GearfeatError(f"the labels hold one class ({int(y.max())}); a classifier needs at least 2")
        if y.max() >= n_classes:
            raise GearfeatError(f"label {int(y.max())} is out of range for n_classes={n_classes} (labels are 0 to "
                                f"{n_classes - 1})")
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise GearfeatError("validation_data must be a pair (features, labels)")
            X_val, y_val = _check_xy(*validation_data)
            if X_val.shape[1] != X.shape[1] or y_val.max() >= n_classes:
                raise GearfeatError(f"validation_data does not match the training data: {X_val.shape[1]} features "
                                    f"(training: {X.shape[1]}), labels up to {int(y_val.max())} (n_classes "
                                    f"{n_classes})")
        self.n_classes_ = int(n_classes)
        self.n_features_in_ = X.shape[1]
        self.classes_ = np.arange(self.n_classes_)
        keras.utils.set_random_seed(self.seed)
        self.model_ = self.build(X.shape[1], self.n_classes_)
        batch_size, epochs = int(self.batch_size), int(self.epochs)
        steps = -(-len(X) // batch_size)
        # one graph call per epoch (steps_per_execution) on an in-graph tf.data pipeline: the per-step
        # Python round trips of fit(numpy) cost more than this small network's arithmetic
        compile_model(self.model_, self.learning_rate, steps_per_execution=steps, fused_adam=True)
        callbacks = []
        if validation_data is not None:
            callbacks = [_EagerValidation(X_val, y_val),
                         keras.callbacks.EarlyStopping(monitor="val_loss", patience=int(self.patience),
                                                       restore_best_weights=True)]
        # one iterator for all epochs (steps_per_epoch given): each epoch is its own seeded permutation
        fitted = self.model_.fit(shuffled_batches(X, y, batch_size=batch_size, epochs=epochs, seed=int(self.seed)),
                                 epochs=epochs, steps_per_epoch=steps, callbacks=callbacks, shuffle=False,
                                 verbose=self.verbose)
        self.history_ = {k: [float(v) for v in values] for k, values in fitted.history.items()}
        # EarlyStopping restores the best epoch's weights when training ends, stopped early or not
        self.best_epoch_ = callbacks[-1].best_epoch + 1 if callbacks else len(self.history_["loss"])
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (N, n_classes)."""
        check_is_fitted(self, "model_")
        X = _check_features(X)
        if X.shape[1] != self.n_features_in_:
            raise GearfeatError(f"X has {X.shape[1]} features, but this head was fitted on {self.n_features_in_}")
        return _probabilities(self.model_, X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted class indexes (N,)."""
        return self.predict_proba(X).argmax(axis=1)


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


class _EagerValidation(keras.callbacks.Callback):
    """Adds ``val_loss`` and ``val_accuracy`` to each epoch's logs, as ``evaluate`` would (cross-entropy
    plus the regularization losses; sparse categorical accuracy), from eager calls: much cheaper here than
    fit's traced validation pass. Listed before the callbacks that read them (EarlyStopping; History
    comes last)."""

    def __init__(self, X: np.ndarray, y: np.ndarray):
        super().__init__()
        self.X, self.y = X, y

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        proba = _probabilities(self.model, self.X)
        loss = keras.losses.sparse_categorical_crossentropy(self.y, proba)
        logs["val_loss"] = float(np.mean(keras.ops.convert_to_numpy(loss)) +
                                 sum(float(r) for r in self.model.losses))
        logs["val_accuracy"] = float(np.mean(proba.argmax(axis=1) == self.y))


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


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = _check_features(X)
    y = np.asarray(y)
    if y.ndim != 1 or len(X) != len(y):
        raise GearfeatError(f"expected features (N, D) and labels (N,), got {X.shape} and {y.shape}")
    if y.dtype.kind not in "iuf" or not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or y.min() < 0:
        raise GearfeatError(f"labels must be class indexes (integers 0, 1, 2, ...), got {y.dtype} values such as "
                            f"{y[0]!r}")
    return X, y.astype(np.int64)


def _check_features(X) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float32)
    except (TypeError, ValueError):
        raise GearfeatError("features must be numbers, an array (N, D)") from None
    if X.ndim != 2 or len(X) == 0:
        raise GearfeatError(f"expected features (N, D) with N >= 1, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        row = int(np.argwhere(~np.isfinite(X))[0, 0])
        raise GearfeatError(f"features hold NaN or infinite values (first in row {row}); check the data (or the "
                            "cache) they come from")
    return X
