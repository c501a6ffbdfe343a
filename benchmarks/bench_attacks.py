"""Attack cost benchmark: PGD vs PGD++ (NJS, HNS) and the batched HNS beta search.

Run: ``python benchmarks/bench_attacks.py [--batch 64] [--repeats 5] [--naive-examples 2]``
Prints one JSON object. Everything is compiled (warmed up) before it is timed; times are
medians over ``--repeats`` runs.

- ``ratio_njs_over_pgd``, ``ratio_hns_over_pgd``: PGD++ / PGD wall time on a small CNN
  (32x32x3 inputs, d=10), T=20 L-inf steps, same batch (targets <= 1.05 and <= 1.6);
  medians, and ``*_min`` from the fastest runs (more robust on a shared machine, whose
  1-minute load average is reported).
- ``hns_search_speedup``: the batched, jitted HNS beta search (closed-form Hessian norm,
  one Jacobian per example) against a naive search that, like the authors' release,
  loops over examples and over the 100 grid points and forms the N x N input Hessian
  ``beta^2 J^T S J`` (N = 3072) at each one (timed on ``--naive-examples`` examples only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from qadv import attacks, signal

H, W, C, D = 32, 32, 3, 10


def make_cnn(key):
    """A small ReLU CNN on [0, 1] images: conv16/s2 - conv32/s2 - dense 10."""
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (3, 3, C, 16), jnp.float32) * float(1 / math.sqrt(27))
    w2 = jax.random.normal(k2, (3, 3, 16, 32), jnp.float32) * float(1 / math.sqrt(144))
    w3 = jax.random.normal(k3, (8 * 8 * 32, D), jnp.float32) * float(4 / math.sqrt(2048))
    dn = ("NHWC", "HWIO", "NHWC")

    def logits_fn(x):
        h = jax.lax.conv_general_dilated(x - 0.5, w1, (2, 2), "SAME", dimension_numbers=dn)
        h = jax.nn.relu(h)
        h = jax.lax.conv_general_dilated(h, w2, (2, 2), "SAME", dimension_numbers=dn)
        h = jax.nn.relu(h)
        return h.reshape(x.shape[0], -1) @ w3

    return logits_fn


def median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns, repeats):
    """Per-function run times, round-robin so that load drifts hit all functions alike."""
    for fn in fns:
        jax.block_until_ready(fn())  # compile / warm up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[i].append(time.perf_counter() - t0)
    return times


def naive_hns_beta(logits_fn, x, y, grid_size=100):
    """Reference-style search for one example: N x N Hessian at every grid point."""
    a = np.asarray(logits_fn(x[None])[0], np.float64)
    if int(np.argmax(a)) != int(y):
        return 1.0
    top = np.sort(a)[::-1]
    gap = top[0] - top[1]
    d = a.size

    def bound(rho):
        return (-math.log(rho) + math.log1p(-rho) + math.log(d - 1)) / gap

    jac = _jac_one(logits_fn, x)  # computed once, like the release
    norms = []
    for beta in np.linspace(bound(1 - 1 / d - 0.01), bound(1e-72), grid_size):
        norms.append(float(_naive_norm(jac, jnp.asarray(a, jnp.float32), jnp.float32(beta))))
    k = int(np.argmax(norms))
    return (
        1.0
        if k in (0, grid_size - 1)
        else float(np.linspace(bound(0.89), bound(1e-72), grid_size)[k])
    )


_jac_one = jax.jit(
    lambda f, x: jax.jacrev(lambda z: f(z[None])[0])(x).reshape(D, -1), static_argnums=0
)


@jax.jit
def _naive_norm(jac, a, beta):
    p = jax.nn.softmax(beta * a)
    s = jnp.diag(p) - jnp.outer(p, p)
    hess = beta * beta * (jac.T @ s @ jac)  # N x N
    return jnp.sqrt(jnp.sum(hess * hess))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-examples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    f = make_cnn(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (args.batch, H, W, C), jnp.float32)
    y = jnp.argmax(f(x), axis=1).astype(jnp.int32)
    key = jax.random.key(2)
    common = dict(key=key, eps=8 / 255, step_size=2 / 255, steps=args.steps)
    njs = attacks.njs(f, x[:16])
    hns = attacks.hns()

    runs = interleaved_times(
        [
            lambda: attacks.pgd(f, x, y, **common),
            lambda: attacks.pgd(f, x, y, temperature=njs, **common),
            lambda: attacks.pgd(f, x, y, temperature=hns, **common),
        ],
        args.repeats,
    )
    t_pgd, t_njs, t_hns = (statistics.median(r) for r in runs)
    m_pgd, m_njs, m_hns = (min(r) for r in runs)

    search = jax.jit(hns.init, static_argnums=0)
    t_search = median_time(lambda: search(f, x, y), args.repeats) / args.batch

    n_naive = args.naive_examples
    naive_hns_beta(f, x[0], y[0])  # compile
    t0 = time.perf_counter()
    naive_betas = [naive_hns_beta(f, x[i], y[i]) for i in range(n_naive)]
    t_naive = (time.perf_counter() - t0) / n_naive
    fast_betas = np.asarray(search(f, x[:n_naive], y[:n_naive]).beta)

    out = {
        "device": str(jax.devices()[0].device_kind),
        "platform": jax.default_backend(),
        "jax_version": jax.__version__,
        "batch": args.batch,
        "steps": args.steps,
        "image_shape": [H, W, C],
        "classes": D,
        "repeats": args.repeats,
        "pgd_s": t_pgd,
        "pgd_njs_s": t_njs,
        "pgd_hns_s": t_hns,
        "ratio_njs_over_pgd": t_njs / t_pgd,
        "ratio_hns_over_pgd": t_hns / t_pgd,
        "ratio_njs_over_pgd_min": m_njs / m_pgd,
        "ratio_hns_over_pgd_min": m_hns / m_pgd,
        "load_average_1min": os.getloadavg()[0],
        "hns_search_per_example_s": t_search,
        "naive_search_per_example_s": t_naive,
        "naive_examples_timed": n_naive,
        "hns_search_speedup": t_naive / t_search,
        "naive_and_batched_betas_agree": bool(np.allclose(naive_betas, fast_betas, rtol=1e-3)),
        "mean_logit_gap": float(jnp.mean(signal.logit_gap(f(x)))),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
