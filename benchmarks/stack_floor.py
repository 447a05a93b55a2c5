"""How far a stack's training step is from this CPU's floor: its products and Adam's update, each against the
fastest way within reach, side by side.

A stack of search heads (``gearfeat.models.stacked``) spends its step on two kinds of work: the first layer's
matrix products (the batch times every head's kernel, and the kernel gradient) and Adam's element-wise update
of every weight. This script times, on one thread, alternating:

* the forward product ``(64, 1280) @ (1280, heads * units)`` in NumPy (OpenBLAS, what stacks use) and in
  TensorFlow (``tf.matmul`` in a ``tf.function``), and the GFLOP/s NumPy reaches;
* Adam's update as stacks run it (NumPy passes over cache-sized blocks, :func:`stacked._adam_block`) against
  TensorFlow's fused ``ResourceApplyAdam`` on variables, the copies a NumPy step would need to use it
  (``tf.constant`` of the gradient), and the memory floor (28 bytes per weight moved at the bandwidth of one
  ``a += b`` pass over arrays much larger than the caches).

The last lines print the ratios: Adam in NumPy against the memory floor and against the fused kernel with
its copies, and NumPy's products against TensorFlow's.

    flock /tmp/gearfeat-heavy.lock .venv/bin/python benchmarks/stack_floor.py
    .venv/bin/python benchmarks/stack_floor.py --quick     # smoke run on small arrays (CI)
"""
from __future__ import annotations

import time

import _common as C
import numpy as np


def main() -> None:
    args = C.arguments(__doc__, **{"--heads": dict(type=int, default=12, help="heads of 512 units (default 12)"),
                                   "--rounds": dict(type=int, default=5)})
    C.header("a stack's step against this CPU's floor: products and Adam's update", args)
    import tensorflow as tf
    from threadpoolctl import threadpool_limits

    from gearfeat.models import stacked

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    heads, rounds, features, batch = (2, 2, 256, 64) if args.quick else (args.heads, args.rounds, 1280, 64)
    width = heads * 512
    n = features * width
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, features), dtype=np.float32)
    kernel = rng.standard_normal((features, width), dtype=np.float32)
    param, m, v, g = (np.abs(rng.standard_normal((features, width), dtype=np.float32)) for _ in range(4))
    rate = np.full((1, width), 1e-4, np.float32)
    scratch = np.empty(stacked._BLOCK, np.float32)
    rows = max(1, stacked._BLOCK // width)

    def numpy_adam() -> None:
        gradient = g.copy()  # the update overwrites its gradient; the copy is timed apart below
        start = time.perf_counter()
        for at in range(0, features, rows):
            block = slice(at, at + rows)
            stacked._adam_block(param[block], m[block], v[block], gradient[block], rate, None, scratch)
        return time.perf_counter() - start

    variables = [tf.Variable(a) for a in (param, m, v)]
    gradient_tensor = tf.constant(g)

    def fused_adam() -> None:
        tf.raw_ops.ResourceApplyAdam(var=variables[0].handle, m=variables[1].handle, v=variables[2].handle,
                                     beta1_power=0.9, beta2_power=0.999, lr=1e-4, beta1=0.9, beta2=0.999,
                                     epsilon=1e-7, grad=gradient_tensor)

    big = [np.ones(n, np.float32), np.ones(n, np.float32)]
    tf_kernel, tf_x = tf.constant(kernel), tf.constant(x)
    tf_product = tf.function(tf.matmul)
    tf_product(tf_x, tf_kernel)
    with threadpool_limits(1):
        times = C.interleaved({
            "numpy product": lambda: x @ kernel,
            "tf product": lambda: tf_product(tf_x, tf_kernel).numpy(),
            "numpy adam": numpy_adam,
            "fused adam (tf variables)": fused_adam,
            "gradient to tf": lambda: tf.constant(g),
            "a += b": lambda: np.add(big[0], big[1], out=big[0]),
        }, rounds, quiet=False)
    best = {name: min(t) for name, t in times.items()}
    per_weight = {name: 1e9 * best[name] / n for name in best}
    bandwidth = 12 * n / best["a += b"]  # bytes moved by one a += b: read two arrays, write one
    floor = 1e9 * 28 / bandwidth  # Adam moves 28 bytes a weight: reads p, m, v, g, writes p, m, v
    flops = 2 * batch * features * width
    C.table(["what", "best of rounds, ms", "ns per weight"],
            [(name, 1000 * best[name], per_weight[name]) for name in best])
    print(f"memory: {bandwidth / 1e9:.1f} GB/s in one pass, so Adam's 28 bytes a weight take {floor:.2f} ns at least")
    print(f"products: NumPy {flops / best['numpy product'] / 1e9:.0f} GFLOP/s, TensorFlow "
          f"{flops / best['tf product'] / 1e9:.0f} GFLOP/s on one thread ({heads} heads of 512 on {features} features)")
    print(f"Adam in NumPy / the memory floor: {per_weight['numpy adam'] / floor:.2f}x")
    print(f"Adam in NumPy / fused TensorFlow Adam plus its gradient's copy: "
          f"{per_weight['numpy adam'] / (per_weight['fused adam (tf variables)'] + per_weight['gradient to tf']):.2f}x "
          "(the weights would also be copied back for NumPy's products)")
    print(f"TensorFlow's product / NumPy's: {best['tf product'] / best['numpy product']:.2f}x")
    C.verdict(quick=args.quick)


if __name__ == "__main__":
    main()
