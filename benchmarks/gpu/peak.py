"""The device's measured matrix-multiply rate, the yardstick of the throughput figures.

Times ``jnp.dot`` of two square matrices (``--n``; 8192 on a GPU) in float32 (at
``highest`` precision, as qadv's default policy) and bfloat16, after one warm-up call,
as the median of ``--repeats`` calls; writes ``{"float32": TFLOP/s, "bfloat16": TFLOP/s}``
with the device name to ``--out``.

    python benchmarks/gpu/peak.py --n 8192 --out results/gpu/run/peak.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp


def rate(n: int, dtype, precision, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision=precision))
    f(a, a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e12


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    rec = {
        "device": str(jax.devices()[0]),
        "n": args.n,
        "float32_tflops": rate(args.n, jnp.float32, jax.lax.Precision.HIGHEST, args.repeats),
        "bfloat16_tflops": rate(args.n, jnp.bfloat16, None, args.repeats),
    }
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps(rec))
    return rec


if __name__ == "__main__":
    main()
