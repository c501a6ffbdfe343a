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
import os
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qadv import attacks, signal

sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))
from common import naive_hns_beta, time_calls, toy_cnn  # benchmarks/perf/common.py

H, W, C, D = 32, 32, 3, 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--naive-examples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()

    f = toy_cnn(jax.random.key(0), (H, W, C), D)
    x = jax.random.uniform(jax.random.key(1), (args.batch, H, W, C), jnp.float32)
    y = jnp.argmax(f(x), axis=1).astype(jnp.int32)
    key = jax.random.key(2)
    common = dict(key=key, eps=8 / 255, step_size=2 / 255, steps=args.steps)
    njs = attacks.njs(f, x[:16])
    hns = attacks.hns()

    timings = time_calls(
        [
            lambda: attacks.pgd(f, x, y, **common),
            lambda: attacks.pgd(f, x, y, temperature=njs, **common),
            lambda: attacks.pgd(f, x, y, temperature=hns, **common),
        ],
        args.repeats,
    )
    t_pgd, t_njs, t_hns = (t.median_s for t in timings)
    m_pgd, m_njs, m_hns = (t.min_s for t in timings)

    search = jax.jit(hns.init, static_argnums=0)
    t_search = time_calls([lambda: search(f, x, y)], args.repeats)[0].median_s / args.batch

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
