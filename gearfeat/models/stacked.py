"""Many dense heads of one shape trained at once: weights stacked on a leading head axis, one pass per step.

:class:`StackedHeads` trains :class:`~gearfeat.models.heads.DenseHead` configurations that share their hidden layer
sizes and batch size as one model. Each head keeps what makes it itself: its learning rate, dropout rate, L2
factor, batch-norm switch and seed (its initial weights are the ones ``DenseHead.build`` draws, its batches the
ones ``DenseHead.fit`` draws from the same seed, its dropout masks the ones its Keras ``Dropout`` layers draw),
and its own early stopping on the validation loss with its best epoch's weights kept. A head that stops leaves
the stack at the end of that epoch, so the others go on without paying for it. :meth:`StackedHeads.head` slices one head out into an ordinary
fitted ``DenseHead``.

The arithmetic is numpy's: the first layer of every head is one matrix product of the batch with the stacked
kernels (``(batch, features) @ (features, heads * units)``, already in the (batch, heads, units) layout the
activations keep, so no transpose or copy), whose weight gradient is one more, and the Adam update runs over
the stacked weights in cache-sized blocks with its moments kept scaled (fewer passes over the weights). On this
project's 2-core CPU numpy's OpenBLAS multiplies about twice as fast as TensorFlow's default kernels, and nothing
is traced. A stacked head follows the same arithmetic as ``DenseHead.fit`` (tested to float rounding), dropout
included: its masks are drawn as Keras's ``Dropout`` draws them (TensorFlow's stateless uniform numbers, seeded
by the layer's seed and the training step).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .._internal.errors import InvalidArgumentError
from ..features.cache import FeatureRows
from .heads import (DenseHead, _check_classes, _check_features, _check_labels, _check_width, _class_indexes,
                     compile_model, streamed_batches)

Features = np.ndarray | FeatureRows
"""Features a stack trains on or predicts: an array, or rows of the feature cache read a window at a time."""

STACK_PARAMS = ("hidden", "batch_size")
"""The head parameters that must be equal for heads to train in one stack: the shapes of the arrays."""

_BN_EPSILON, _BN_MOMENTUM = 1e-3, 0.99  # Keras BatchNormalization's defaults, which DenseHead uses
_BETA_1, _BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-7  # Keras Adam's defaults, which DenseHead uses
_CLIP = 1e-7  # Keras's epsilon: validation probabilities are clipped to [_CLIP, 1 - _CLIP] (its cross-entropy)
_BLOCK = 1 << 17  # elements per block of the Adam update: a block's arrays stay in the caches
_DRAWN_STEPS = 16  # training steps of dropout numbers drawn per call


def stack_key(head: DenseHead) -> tuple:
    """Heads with the same key can train in one stack."""
    return tuple(int(h) for h in head.hidden), int(head.batch_size)


def stack_bytes(hidden: Sequence[int], n_heads: int, n_features: int, n_classes: int, batch_size: int,
                n_val: int = 0) -> int:
    """An upper estimate of the memory (bytes) a stack of ``n_heads`` heads allocates while it trains: per
    weight the weight, its gradient, Adam's two moments and the best epoch's copy (5 float32), plus the
    activations of one batch and of the validation pass (the shared feature arrays are not counted)."""
    sizes = [n_features, *(int(h) for h in hidden), n_classes]
    weights = sum(a * b + 6 * b for a, b in zip(sizes, sizes[1:]))
    units = sum(sizes[1:])
    batch = batch_size * (n_features + 8 * units)  # the gathered rows; pre-/post-activations, masks, gradients
    val = 4 * n_val * units  # the validation pass's activations and probabilities
    return 4 * n_heads * (5 * weights + batch + val) + 4 * batch_size * n_features


def plan_stacks(heads: Sequence[DenseHead], *, n_features: int, n_classes: int, n_val: int = 0,
                budget: int | None = None) -> list[list[int]]:
    """The positions of ``heads`` grouped into stacks: one per :func:`stack_key`, in order of first
    appearance, each split into as few equal parts as keep every part's :func:`stack_bytes` within
    ``budget`` bytes (None: no limit). A single head over the budget is a stack of its own."""
    groups: dict[tuple, list[int]] = {}
    for i, head in enumerate(heads):
        groups.setdefault(stack_key(head), []).append(i)
    stacks = []
    for (hidden, batch_size), members in groups.items():
        parts = 1
        if budget is not None:
            while parts < len(members) and stack_bytes(hidden, -(-len(members) // parts), n_features, n_classes,
                                                       batch_size, n_val) > budget:
                parts += 1
        size = -(-len(members) // parts)
        stacks.extend(members[i:i + size] for i in range(0, len(members), size))
    return stacks


@dataclass
class _Weights:
    """A stack's weights, head axis first except the first kernel's: ``kernels[0]`` is (features, heads,
    units) so that the whole first layer is one matrix product; ``kernels[l]`` (heads, in, out) after it;
    ``biases[l]`` (heads, out); batch normalization's ``gammas``, ``betas``, ``means`` and ``variances``
    (heads, units) of the hidden layers."""

    kernels: list[np.ndarray]
    biases: list[np.ndarray]
    gammas: list[np.ndarray]
    betas: list[np.ndarray]
    means: list[np.ndarray]
    variances: list[np.ndarray]

    def arrays(self) -> Iterator[tuple[np.ndarray, int]]:
        """Every array with its head axis."""
        for i, kernel in enumerate(self.kernels):
            yield kernel, int(i == 0)
        for group in (self.biases, self.gammas, self.betas, self.means, self.variances):
            for array in group:
                yield array, 0

    def trainable(self) -> list[np.ndarray]:
        return [*self.kernels, *self.biases, *self.gammas, *self.betas]

    def map(self, fn) -> _Weights:
        """A new _Weights of ``fn(array, head_axis)`` for each array."""
        out = iter([fn(array, axis) for array, axis in self.arrays()])
        n, b, g = len(self.kernels), len(self.biases), len(self.gammas)
        return _Weights([next(out) for _ in range(n)], [next(out) for _ in range(b)],
                        *([next(out) for _ in range(g)] for _ in range(4)))

    def copy_heads(self, source: _Weights, heads: np.ndarray) -> None:
        """Copy the weights of ``heads`` (positions) from ``source``."""
        for (mine, axis), (theirs, _) in zip(self.arrays(), source.arrays()):
            index = (slice(None),) * axis + (heads,)
            mine[index] = theirs[index]


class StackedHeads:
    """Train :class:`~gearfeat.models.heads.DenseHead` configurations of the same hidden sizes and batch size together.

    ``fit`` gives each head the results ``DenseHead.fit`` would: ``histories_``, ``best_epochs_`` (1-based) and
    the best epoch's weights, whose predictions :meth:`predict_proba` returns for every head at once and
    :meth:`head` as an ordinary fitted ``DenseHead``. The training loss in a history adds each epoch's L2
    penalty as it stands at the end of the epoch (Keras adds each batch's). ``verbose`` is not used.
    """

    def __init__(self, heads: Sequence[DenseHead]):
        self.heads = list(heads)

    def _check(self) -> None:
        if not self.heads:
            raise InvalidArgumentError("a stack needs at least one head")
        for head in self.heads:
            if not isinstance(head, DenseHead):
                raise InvalidArgumentError(f"a stack holds DenseHead instances, got {head!r:.60}")
            head.validate()
        keys = {stack_key(head) for head in self.heads}
        if len(keys) > 1:
            raise InvalidArgumentError(f"the heads of a stack share {' and '.join(STACK_PARAMS)}; got {sorted(keys)}")

    # ------------------------------------------------------------------------------------------ fit
    def fit(self, X: Features, y: np.ndarray, validation_data: tuple[Features, np.ndarray] | None = None,
            classes: Sequence | None = None) -> StackedHeads:
        """Train every head on ``X`` (N, D) and labels ``y``, each stopping early on ``validation_data`` as
        ``DenseHead.fit`` does (same arguments, same checks).

        ``X`` (and the validation features) may be :class:`~gearfeat.features.cache.FeatureRows`: nothing is held
        whole, the batches of each epoch come from windows read from the cache as
        :meth:`DenseHead.fit_streamed` reads them (the same batches for the same seed), and the validation pass
        reads a window at a time."""
        self._check()
        X = _features(X)
        y = _check_labels(y, len(X))
        self.classes_ = _check_classes(y, classes)
        y = _class_indexes(self.classes_, y, "y")
        X_val = y_val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise InvalidArgumentError("validation_data must be a pair (features, labels)")
            X_val = _check_width(_features(validation_data[0]), X.shape[1], "validation_data")
            y_val = _class_indexes(self.classes_, _check_labels(validation_data[1], len(X_val)), "validation labels")
        self.n_features_in_ = X.shape[1]
        _Training(self, X, y, X_val, y_val).run()
        return self

    # ------------------------------------------------------------------------------------------ results
    def predict_proba(self, X: Features) -> np.ndarray:
        """Class probabilities of every head with its kept weights: (heads, N, classes), heads in order."""
        self._fitted()
        X = _check_width(_features(X), self.n_features_in_, "X")
        return np.ascontiguousarray(_probabilities(self.weights_, self._bn, X).transpose(1, 0, 2))

    def head(self, index: int) -> DenseHead:
        """Head ``index`` as a fitted ``DenseHead`` (its model built and given the kept weights): it predicts
        what :meth:`predict_proba` gives for it."""
        self._fitted()
        spec = self.heads[index]
        head = DenseHead(**spec.get_params())
        head.classes_, head.n_features_in_ = self.classes_, self.n_features_in_
        head.model_ = spec.build(self.n_features_in_, len(self.classes_))
        w = self.weights_
        for i in range(len(spec.hidden)):
            kernel = w.kernels[i][:, index] if i == 0 else w.kernels[i][index]
            dense = [kernel] if spec.batch_norm else [kernel, w.biases[i][index]]
            head.model_.get_layer(f"head_dense_{i}").set_weights(dense)
            if spec.batch_norm:
                head.model_.get_layer(f"head_bn_{i}").set_weights(
                    [w.gammas[i][index], w.betas[i][index], w.means[i][index], w.variances[i][index]])
        last = len(spec.hidden)
        kernel = w.kernels[last][:, index] if last == 0 else w.kernels[last][index]
        head.model_.get_layer("head_output").set_weights([kernel, w.biases[last][index]])
        compile_model(head.model_, spec.learning_rate, for_training=False)
        head.history_ = {key: list(values) for key, values in self.histories_[index].items()}
        head.best_epoch_ = self.best_epochs_[index]
        return head

    def select(self, indexes: Sequence[int]) -> StackedHeads:
        """A fitted stack of only the heads at ``indexes`` (their kept weights and histories): small to send
        between processes where one head of a large stack is wanted."""
        self._fitted()
        index = np.asarray(indexes, dtype=np.int64)
        part = StackedHeads([self.heads[i] for i in index])
        part.classes_, part.n_features_in_, part._bn = self.classes_, self.n_features_in_, self._bn[index]
        part.weights_ = self.weights_.map(lambda a, axis: np.take(a, index, axis=axis))
        part.histories_ = [self.histories_[i] for i in index]
        part.best_epochs_ = [self.best_epochs_[i] for i in index]
        return part

    def _fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise InvalidArgumentError("this StackedHeads is not fitted yet; call fit first")


class _Training:
    """One ``StackedHeads.fit``: the active heads' state, compacted whenever heads stop.

    Activations are (batch, heads, units), so the first layer's product ``(b, D) @ (D, heads * units)`` is
    already in that layout (no transpose, no copy), and its kernel gradient ``(D, b) @ (b, heads * units)``
    reads it as one matrix. Adam's moments are kept scaled (see :meth:`_adam`)."""

    def __init__(self, stack: StackedHeads, X, y, X_val, y_val):
        self.stack, self.X, self.y, self.X_val, self.y_val = stack, X, y, X_val, y_val
        heads = stack.heads
        self.n_classes = len(stack.classes_)
        self.batch_size = int(heads[0].batch_size)
        self.steps = -(-len(X) // self.batch_size)
        self.hidden = [int(h) for h in heads[0].hidden]
        sizes = [X.shape[1], *self.hidden, self.n_classes]
        self.sizes = sizes
        n = len(heads)
        self.lr = np.array([h.learning_rate for h in heads], np.float64)
        self.l2 = np.array([h.l2 for h in heads], np.float32)
        self.rate = np.array([h.dropout for h in heads], np.float32)
        self.dropout_seeds = [h.layer_seeds()[1] for h in heads]  # per head, its Dropout layers' seeds
        self.bn = np.array([bool(h.batch_norm) for h in heads])
        self.epochs = np.array([int(h.epochs) for h in heads])
        self.patience = np.array([int(h.patience) for h in heads])
        stack._bn = self.bn
        self.weights = _initial_weights(heads, sizes)
        self.m = self.weights.map(lambda a, _: np.zeros_like(a))
        self.v = self.weights.map(lambda a, _: np.zeros_like(a))
        self.kept = self.weights.map(lambda a, _: np.zeros_like(a))  # the result, all heads
        self.best = self.weights.map(lambda a, _: a.copy())  # best epoch so far, active heads
        self.active = np.arange(n)  # positions in stack.heads of the heads still training
        self.best_loss = np.full(n, np.inf)
        self.wait = np.zeros(n, int)
        self.best_epoch = np.zeros(n, int)
        self.histories = [{"loss": [], "accuracy": []} | ({"val_loss": [], "val_accuracy": []} if X_val is not None
                                                          else {}) for _ in range(n)]
        self.streamed = isinstance(X, FeatureRows)
        self.orders = {} if self.streamed else {seed: _permutations(len(X), seed, int(self.epochs.max()))
                                                for seed in {int(h.seed) for h in heads}}
        self.iterations = 0
        self.drawn: dict[tuple[int, int], tuple[int, np.ndarray]] = {}  # (Dropout seed, units) -> (first step, numbers)
        self.scratch = np.empty(_BLOCK, np.float32)  # Adam's temporary, one block

    def run(self) -> None:
        for epoch in range(int(self.epochs.max())):
            if not len(self.active):
                break
            self._epoch(epoch)
        stack = self.stack
        stack.weights_, stack.histories_ = self.kept, self.histories
        stack.best_epochs_ = [int(e) + 1 for e in self.best_epoch]

    def _epoch(self, epoch: int) -> None:
        heads = [self.stack.heads[i] for i in self.active]
        seeds = {int(h.seed) for h in heads}
        loss_sum = np.zeros(len(heads))
        correct = np.zeros(len(heads))
        streams = {s: self._batches(s, epoch) for s in seeds}
        for _ in range(self.steps):
            batches = {s: next(stream) for s, stream in streams.items()}
            loss, right = self._step(heads, batches)
            count = len(next(iter(batches.values()))[1])
            loss_sum += loss * count
            correct += right
        penalty = self._penalty()
        train_loss = loss_sum / len(self.X) + penalty
        train_acc = correct / len(self.X)
        finished = np.array([epoch + 1 >= self.epochs[i] for i in self.active])
        if self.X_val is None:
            for j, i in enumerate(self.active):
                self.histories[i]["loss"].append(float(train_loss[j]))
                self.histories[i]["accuracy"].append(float(train_acc[j]))
            self.best_epoch[self.active] = epoch
            self._finish(finished, current=True)
            return
        proba = _probabilities(self.weights, self.bn[self.active], self.X_val)  # (N, heads, classes)
        val_loss = _clipped_cross_entropy(proba, self.y_val) + penalty
        val_acc = np.mean(proba.argmax(axis=2) == self.y_val[:, None], axis=0)
        improved = []
        for j, i in enumerate(self.active):
            h = self.histories[i]
            h["loss"].append(float(train_loss[j]))
            h["accuracy"].append(float(train_acc[j]))
            h["val_loss"].append(float(val_loss[j]))
            h["val_accuracy"].append(float(val_acc[j]))
            # Keras's EarlyStopping(monitor="val_loss", restore_best_weights=True), head by head
            self.wait[i] += 1
            if epoch == 0 or val_loss[j] < self.best_loss[i]:
                improved.append(j)
                if val_loss[j] < self.best_loss[i]:
                    self.best_loss[i] = val_loss[j]
                    self.wait[i] = 0
                self.best_epoch[i] = epoch
            elif self.wait[i] >= self.patience[i] and epoch > 0:
                finished[j] = True
        if improved:
            self.best.copy_heads(self.weights, np.array(improved))
        self._finish(finished, current=False)

    def _batches(self, seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The (features, labels) batches of one epoch for the heads of ``seed``: ``DenseHead.fit``'s permutation
        of the rows in memory, or ``DenseHead.fit_streamed``'s windows of cache rows."""
        if self.streamed:
            yield from streamed_batches(self.X, np.arange(len(self.X)), self.y, batch_size=self.batch_size,
                                        seed=seed, epoch=epoch)
            return
        order = self.orders[seed][epoch]
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            yield self.X[rows], self.y[rows]

    def _finish(self, finished: np.ndarray, *, current: bool) -> None:
        """Keep the weights of the heads that stop (their best epoch's, or the current ones without validation)
        and drop them from the stack."""
        if not finished.any():
            return
        done = np.flatnonzero(finished)
        source = self.weights if current else self.best
        for (kept, axis), (theirs, _) in zip(self.kept.arrays(), source.arrays()):
            index = (slice(None),) * axis
            kept[index + (self.active[done],)] = theirs[index + (done,)]
        keep = np.flatnonzero(~finished)
        self.active = self.active[keep]
        if len(keep):
            for name in ("weights", "m", "v", "best"):
                setattr(self, name, getattr(self, name).map(lambda a, axis: np.take(a, keep, axis=axis)))

    def _penalty(self) -> np.ndarray:
        """Each active head's L2 penalty, l2 * the sum of its squared kernel weights (Keras's regularizer)."""
        total = np.zeros(len(self.active))
        for i, kernel in enumerate(self.weights.kernels):
            total += np.einsum("dhk,dhk->h" if i == 0 else "hik,hik->h", kernel, kernel, dtype=np.float64)
        return total * self.l2[self.active]

    def _step(self, heads: list[DenseHead], batches: dict[int, tuple[np.ndarray, np.ndarray]]
              ) -> tuple[np.ndarray, np.ndarray]:
        """One training step of every active head on its batch (``batches``: the (features, labels) of each seed);
        returns each head's mean cross-entropy and number of right answers on it."""
        active, w = self.active, self.weights
        shared = len(batches) == 1
        n_heads = len(active)
        if shared:
            x0, labels = next(iter(batches.values()))  # (b, D), (b,)
            labels = labels[:, None]  # (b, 1)
        else:
            seeds = [int(h.seed) for h in heads]
            x0 = np.stack([batches[s][0] for s in seeds], axis=1)  # (b, H, D)
            labels = np.stack([batches[s][1] for s in seeds], axis=1)  # (b, H)
        b = len(x0)
        labels = np.broadcast_to(labels, (b, n_heads))
        rates, bn = self.rate[active], self.bn[active]
        n_layers = len(self.hidden)
        # ---- forward
        cache = []
        a = x0
        for layer in range(n_layers + 1):
            z = _dense(a, w.kernels[layer], layer)  # (b, H, units)
            if layer == n_layers:
                z += w.biases[layer]
                break
            norm = _normalize_train(z, w, layer, bn)
            r = np.maximum(z, 0.0, out=z)
            mask = self._dropout_mask(active, layer, rates, b, r.shape[-1])
            a = r if mask is None else r * mask
            cache.append((norm, r, a, mask))
            if bn.any():  # Keras's moving statistics, momentum 0.99, from the batch's biased variance
                mean, var = norm[1], norm[2]
                w.means[layer][bn] = w.means[layer][bn] * _BN_MOMENTUM + mean * (1 - _BN_MOMENTUM)
                w.variances[layer][bn] = w.variances[layer][bn] * _BN_MOMENTUM + var * (1 - _BN_MOMENTUM)
        logits = z
        logits -= logits.max(axis=2, keepdims=True)
        exp = np.exp(logits)
        total = exp.sum(axis=2, keepdims=True)
        picked = np.take_along_axis(logits, labels[:, :, None], axis=2)[:, :, 0]
        loss = np.mean(np.log(total[:, :, 0]) - picked, axis=0)
        right = np.sum(logits.argmax(axis=2) == labels, axis=0)
        # ---- backward
        d = exp
        d /= total
        rows_index, heads_index = np.indices((b, n_heads))
        d[rows_index, heads_index, labels] -= 1
        d /= b
        g_kernels: list = [None] * (n_layers + 1)
        g_biases: list = [None] * (n_layers + 1)
        g_gammas: list = [None] * n_layers
        g_betas: list = [None] * n_layers
        g_biases[n_layers] = d.sum(axis=0)
        for layer in range(n_layers, -1, -1):
            inputs = x0 if layer == 0 else cache[layer - 1][2]
            g_kernels[layer] = _kernel_gradient(inputs, d, layer)
            if layer == 0:
                break
            below = np.empty(inputs.shape, np.float32)  # (b, H, units below): d @ kernel.T head by head
            np.matmul(d.transpose(1, 0, 2), w.kernels[layer].transpose(0, 2, 1), out=below.transpose(1, 0, 2))
            d = below
            norm, r, _, mask = cache[layer - 1]
            if mask is not None:
                d *= mask
            d *= r > 0
            g_gammas[layer - 1], g_betas[layer - 1], g_biases[layer - 1] = _normalize_backward(
                d, w, layer - 1, bn, norm)
        grads = [*g_kernels, *g_biases, *g_gammas, *g_betas]
        self._adam(grads)
        return loss, right

    def _dropout_mask(self, active, layer, rates, b, units) -> np.ndarray | None:
        """Each head's inverted-dropout mask (b, H, units), the one its Keras ``Dropout`` layer draws at this
        training step (ones for a head without dropout)."""
        if not rates.any():
            return None
        mask = np.ones((b, len(active), units), np.float32)
        dropping = np.flatnonzero(rates)
        # heads of one seed share their layers' seeds, hence their numbers (a search's heads all do): drawn once
        seeds, which = np.unique([self.dropout_seeds[active[j]][layer] for j in dropping], return_inverse=True)
        drawn = [self._uniforms(int(seed), units)[:b] for seed in seeds]
        for j, k in zip(dropping, which):
            rate, u = float(self.stack.heads[active[j]].dropout), drawn[k]
            np.multiply(u >= np.float32(rate), np.float32(1 / (1 - rate)), out=mask[:, j])
        return mask

    def _uniforms(self, seed: int, units: int) -> np.ndarray:
        """The numbers of a ``Dropout(seed=seed)`` layer at this step, (batch_size, units) (a smaller last batch
        takes the first rows: the stateless stream fills a shape in order); drawn for _DRAWN_STEPS steps at once,
        since a call costs about a millisecond whatever its size here."""
        start, block = self.drawn.get((seed, units), (None, None))
        step = self.iterations
        if start is None or not start <= step < start + len(block):
            block = _dropout_uniforms((self.batch_size, units), [seed], range(step, step + _DRAWN_STEPS))[0]
            start = step
            self.drawn[seed, units] = (start, block)
        return block[step - start]

    def _adam(self, grads: list[np.ndarray]) -> None:
        """Keras's Adam on every trainable array, each head with its own learning rate; the L2 gradient
        (2 * l2 * kernel) joins the kernels' gradients block by block.

        Keras updates ``m += (g - m) * (1 - b1)``, ``v += (g * g - v) * (1 - b2)`` and ``p -= lr * sqrt(1 - b2**t)
        / (1 - b1**t) * m / (sqrt(v) + eps)``. The moments are kept scaled, ``M = m / (1 - b1)`` and ``V = v / (1 -
        b2)``, so that each is one scale and one add (``M = b1 * M + g``, ``V = b2 * V + g * g``) and the step is
        ``p -= rate * M / (sqrt(V) + eps / sqrt(1 - b2))`` with the constants folded into ``rate``: the same
        arithmetic up to float rounding, in fewer passes over the weights."""
        self.iterations += 1
        t = self.iterations
        rate = (self.lr[self.active] * math.sqrt(1 - _BETA_2 ** t) / (1 - _BETA_1 ** t) * (1 - _BETA_1)
                / math.sqrt(1 - _BETA_2)).astype(np.float32)
        l2 = 2 * self.l2[self.active]
        n_kernels = len(self.weights.kernels)
        for k, (param, m, v, g) in enumerate(zip(self.weights.trainable(), self.m.trainable(), self.v.trainable(),
                                                 grads)):
            flat = [x.reshape(len(x), -1) for x in (param, m, v, np.ascontiguousarray(g, np.float32))]
            if k == 0:  # (D, H, units): each row holds every head, the columns go head by head
                units = param.shape[2]
                step, decay, per_row = np.repeat(rate, units)[None, :], np.repeat(l2, units)[None, :], False
            else:  # (H, ...): a row per head
                step, decay, per_row = rate[:, None], l2[:, None], True
            decay = decay if k < n_kernels and l2.any() else None
            rows = max(1, _BLOCK // flat[0].shape[1])
            if decay is not None and self.scratch.size < rows * flat[0].shape[1]:
                self.scratch = np.empty(rows * flat[0].shape[1], np.float32)
            for start in range(0, len(flat[0]), rows):
                block = slice(start, start + rows)
                _adam_block(*(x[block] for x in flat), step[block] if per_row else step,
                            None if decay is None else decay[block] if per_row else decay, self.scratch)


_B1, _B2 = np.float32(_BETA_1), np.float32(_BETA_2)
_EPS_SCALED = np.float32(_ADAM_EPSILON / math.sqrt(1 - _BETA_2))  # epsilon against sqrt(V), V = v / (1 - b2)


def _adam_block(param, m, v, g, rate, decay, scratch) -> None:
    """:meth:`_Training._adam` on one block (2-D views), in place; ``g`` is overwritten."""
    if decay is not None:
        penalty = scratch[:g.size].reshape(g.shape)
        np.multiply(param, decay, out=penalty)
        g += penalty
    m *= _B1
    m += g
    np.square(g, out=g)
    v *= _B2
    v += g
    np.sqrt(v, out=g)
    g += _EPS_SCALED
    np.divide(m, g, out=g)
    g *= rate
    param -= g


def _dropout_uniforms(shape: tuple[int, int], seeds: Sequence[int], steps: Sequence[int]) -> np.ndarray:
    """The uniform numbers Keras ``Dropout(seed=s)`` layers draw at training steps ``steps`` (0-based), for each
    ``s`` of ``seeds``: (len(seeds), len(steps), *shape). A layer's seed generator state ``[s, step]`` (int64,
    folded into int32 as Keras's TensorFlow backend folds it) seeds ``tf.random.stateless_uniform``; a unit is
    kept where its number is at least the rate."""
    import tensorflow as tf

    states = np.mod([[seed, step] for seed in seeds for step in steps], np.iinfo(np.int32).max - 1).astype(np.int32)
    drawn = _stateless_uniforms()(tf.constant(states), tf.constant(shape, tf.int32)).numpy()
    return drawn.reshape(len(seeds), len(steps), *shape)


@functools.cache
def _stateless_uniforms():
    """One graph that draws ``tf.random.stateless_uniform(shape)`` for each seed state, traced once."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.int32), tf.TensorSpec([2], tf.int32)])
    def draw(states, shape):
        return tf.map_fn(lambda state: tf.random.stateless_uniform(shape, seed=state, dtype=tf.float32), states,
                         fn_output_signature=tf.float32)
    return draw


def _dense(a: np.ndarray, kernel: np.ndarray, layer: int) -> np.ndarray:
    """``a @ kernel`` for every head, (b, H, out). Layer 0 takes the batch (b, D), shared by all heads (one
    product with the (D, H * units) kernel), or one per head (b, H, D); later layers (b, H, in)."""
    if layer == 0 and a.ndim == 2:
        d, n_heads, units = kernel.shape
        return (a @ kernel.reshape(d, -1)).reshape(len(a), n_heads, units)
    per_head = kernel.transpose(1, 0, 2) if layer == 0 else kernel  # (H, in, out)
    out = np.empty((len(a), per_head.shape[0], per_head.shape[2]), np.float32)
    np.matmul(a.transpose(1, 0, 2), per_head, out=out.transpose(1, 0, 2))
    return out


def _kernel_gradient(inputs: np.ndarray, d: np.ndarray, layer: int) -> np.ndarray:
    """The gradient of ``_dense``'s kernel from the output gradient ``d`` (b, H, out), in the kernel's layout."""
    b, n_heads, units = d.shape
    if layer == 0 and inputs.ndim == 2:
        return (inputs.T @ d.reshape(b, -1)).reshape(inputs.shape[1], n_heads, units)
    shape = (inputs.shape[2], n_heads, units) if layer == 0 else (n_heads, inputs.shape[2], units)
    out = np.empty(shape, np.float32)
    np.matmul(inputs.transpose(1, 2, 0), d.transpose(1, 0, 2), out=out.transpose(1, 0, 2) if layer == 0 else out)
    return out


def _add_bias(z: np.ndarray, bias: np.ndarray, heads: np.ndarray) -> None:
    """``z[:, heads] += bias[heads]`` (z is (b, H, units)), without a copy when every head or none is chosen."""
    if heads.all():
        z += bias
    elif heads.any():
        z[:, heads] += bias[heads]


def _normalize_train(z: np.ndarray, w: _Weights, layer: int, bn: np.ndarray):
    """In place on ``z`` (b, H, units): batch normalization (training: the batch's statistics) for the heads
    with ``bn``, the bias for the others. Returns what the backward pass needs (None without batch norm)."""
    _add_bias(z, w.biases[layer], ~bn)
    if not bn.any():
        return None
    zb = z if bn.all() else z[:, bn]
    mean = zb.mean(axis=0)
    var = zb.var(axis=0)
    inv = 1.0 / np.sqrt(var + _BN_EPSILON)
    xhat = (zb - mean) * inv
    normalized = xhat * w.gammas[layer][bn] + w.betas[layer][bn]
    if bn.all():
        z[...] = normalized
    else:
        z[:, bn] = normalized
    return xhat, mean, var, inv


def _normalize_backward(d: np.ndarray, w: _Weights, layer: int, bn: np.ndarray, norm):
    """The gradients through :func:`_normalize_train`: of its input (in place on ``d``, (b, H, units)), and
    of gamma, beta and the bias, (H, units) each."""
    _, n_heads, units = d.shape
    g_gamma = np.zeros((n_heads, units), np.float32)
    g_beta = np.zeros((n_heads, units), np.float32)
    g_bias = np.zeros((n_heads, units), np.float32)
    plain = ~bn
    if plain.all():
        g_bias[...] = d.sum(axis=0)
    elif plain.any():
        g_bias[plain] = d[:, plain].sum(axis=0)
    if bn.any():
        xhat, mean, var, inv = norm
        db = d if bn.all() else d[:, bn]
        g_beta[bn] = db.sum(axis=0)
        g_gamma[bn] = (db * xhat).sum(axis=0)
        dxhat = db * w.gammas[layer][bn]
        through = inv * (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0))
        if bn.all():
            d[...] = through
        else:
            d[:, bn] = through
    return g_gamma, g_beta, g_bias


def _forward(w: _Weights, bn: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Inference: every head's class probabilities on ``X``, (N, H, classes); batch normalization with the
    moving statistics, no dropout."""
    n_layers = len(w.gammas)
    a = X
    for layer in range(n_layers + 1):
        z = _dense(a, w.kernels[layer], layer)
        if layer == n_layers:
            z += w.biases[layer]
            break
        _add_bias(z, w.biases[layer], ~bn)
        if bn.any():
            inv = w.gammas[layer][bn] / np.sqrt(w.variances[layer][bn] + _BN_EPSILON)
            z[:, bn] = (z[:, bn] - w.means[layer][bn]) * inv + w.betas[layer][bn]
        a = np.maximum(z, 0.0, out=z)
    z -= z.max(axis=2, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=2, keepdims=True)
    return z


def _probabilities(w: _Weights, bn: np.ndarray, X: Features) -> np.ndarray:
    """:func:`_forward` of features in memory, or of cache rows a window at a time: (N, heads, classes)."""
    if not isinstance(X, FeatureRows):
        return _forward(w, bn, X)
    return X.apply(lambda block: _forward(w, bn, _check_features(block)))


def _features(X: Features) -> Features:
    """``X`` checked as ``DenseHead.fit`` checks it, or a :class:`FeatureRows` as it is (its windows are checked
    as they are read)."""
    return X if isinstance(X, FeatureRows) else _check_features(X)


def _clipped_cross_entropy(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each head's mean cross-entropy as Keras computes it from probabilities (N, H, classes), clipped and
    renormalized."""
    clipped = np.clip(proba, _CLIP, 1 - _CLIP)
    picked = np.take_along_axis(clipped, np.broadcast_to(y[:, None], clipped.shape[:2])[:, :, None], axis=2)[:, :, 0]
    return np.mean(np.log(clipped.sum(axis=2)) - np.log(picked), axis=0, dtype=np.float64)


def _initial_weights(heads: Sequence[DenseHead], sizes: list[int]) -> _Weights:
    """The weights ``DenseHead.build`` starts each head with (its seeded Glorot-uniform kernels, zero biases,
    batch normalization's ones and zeros), stacked."""
    import keras

    kernels = [np.empty((len(heads), a, b), np.float32) for a, b in zip(sizes, sizes[1:])]
    for j, head in enumerate(heads):
        for layer, seed in enumerate(head.layer_seeds()[0]):
            shape = (sizes[layer], sizes[layer + 1])
            kernels[layer][j] = keras.ops.convert_to_numpy(keras.initializers.GlorotUniform(seed)(shape))
    kernels[0] = np.ascontiguousarray(kernels[0].transpose(1, 0, 2))
    n = len(heads)
    hidden = sizes[1:-1]
    return _Weights(kernels, [np.zeros((n, b), np.float32) for b in sizes[1:]],
                    [np.ones((n, b), np.float32) for b in hidden], [np.zeros((n, b), np.float32) for b in hidden],
                    [np.zeros((n, b), np.float32) for b in hidden], [np.ones((n, b), np.float32) for b in hidden])


def _permutations(n: int, seed: int, epochs: int) -> np.ndarray:
    """The row order of each epoch, (epochs, n): the permutations ``DenseHead.fit`` draws from ``seed``."""
    import tensorflow as tf

    rows = tf.range(n, dtype=tf.int64)
    return np.stack([tf.random.experimental.stateless_shuffle(rows, seed=tf.constant([seed, epoch], tf.int64)).numpy()
                     for epoch in range(epochs)])
