"""Cost of every registered attack per example, relative to PGD-20 on the same model.

Run::

    python benchmarks/bench_protocol.py --checkpoint runs/fmnist_cnn4_bnn_wq --n 100 \
        --out results/bench_protocol.json

Without ``--checkpoint`` it times a small synthetic ReLU CNN (28x28x1, d = 10) instead.
Each attack runs through ``qadv.attacks.execute`` (the code path ``qadv attack`` and
``qadv evaluate`` use) with its default settings at ε = 8/255 (L∞), on the first ``--n``
test images (real Fashion-MNIST with a checkpoint), compiled before timing; the time is
the median of ``--repeats`` runs. Attacks that stop early once every example is broken
(APGD, Square, FAB) cost what they cost on *this* model: a robust model makes them
dearer. Prints one JSON object (and writes it with ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qadv import records
from qadv.attacks import AttackContext, example_keys, execute, prepare, registry

sys.path.insert(0, str(Path(__file__).resolve().parent / "perf"))
from common import toy_cnn  # benchmarks/perf/common.py

ATTACKS = [
    ("pgd", {}),
    ("fgsm", {}),
    ("pgd", {"temperature": "njs"}),
    ("pgd", {"temperature": "hns"}),
    ("apgd-ce", {}),
    ("apgd-dlr", {}),
    ("apgd-t", {}),
    ("apgd-ce", {"temperature": "hns"}),
    ("square", {}),
    ("fab-t", {}),
    ("deepfool", {}),
    ("transfer", {}),
]


def synthetic_cnn(key):
    """A small ReLU CNN on 28x28x1 [0, 1] images: conv16/s2 - conv32/s2 - dense 10."""
    logits_fn = toy_cnn(key, (28, 28, 1), 10)
    return jax.tree_util.Partial(lambda w, x: logits_fn(x), ())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="a run folder (default: synthetic CNN)")
    ap.add_argument("--surrogate", default=None, help="surrogate run folder (transfer)")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    if args.checkpoint:
        from qadv import data
        from qadv.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint)
        f = model.logits_fn
        xs, ys = data.load_split(model.metadata["dataset"], "test")
        x = jnp.asarray(xs[: args.n].astype(np.float32) / 255.0)
        y = jnp.asarray(ys[: args.n].astype(np.int32))
        surrogate = load_checkpoint(args.surrogate).logits_fn if args.surrogate else f
        name = args.checkpoint
    else:
        f = synthetic_cnn(jax.random.key(0))
        x = jax.random.uniform(jax.random.key(1), (args.n, 28, 28, 1), jnp.float32)
        y = jnp.argmax(f(x), -1).astype(jnp.int32)
        surrogate, name = f, "synthetic 28x28x1 ReLU CNN"
    context = AttackContext(calib_images=x, surrogate=surrogate)
    keys = example_keys(jax.random.key(0), args.n)

    rows = []
    for attack_name, opts in ATTACKS:
        cfg = registry.make(attack_name, eps=args.eps, **opts)
        data_ = prepare(cfg, f, context)
        t0 = time.perf_counter()
        res = jax.block_until_ready(execute(cfg, data_, f, x, y, keys))
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(execute(cfg, data_, f, x, y, keys))
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "attack": cfg.label,
                "config": registry.to_dict(cfg),
                "ms_per_example": 1e3 * statistics.median(times) / args.n,
                "first_call_s": compile_s,
                "success_rate": float(np.mean(np.asarray(res.success))),
                "mean_queries": float(np.mean(np.asarray(res.queries))),
            }
        )
        print(f"{cfg.label:28s} {rows[-1]['ms_per_example']:9.3f} ms/example", flush=True)
    base = next(r for r in rows if r["attack"] == "PGD L∞")["ms_per_example"]
    for r in rows:
        r["cost_over_pgd20"] = r["ms_per_example"] / base
    out = {
        "benchmark": "attack cost per example relative to PGD-20 (same model, machine, batch)",
        "model": name,
        "n": args.n,
        "eps": args.eps,
        "repeats": args.repeats,
        "command": "python benchmarks/bench_protocol.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v),
        "attacks": rows,
        "environment": records.environment(),
        "load_average_1min": float(np.round(__import__("os").getloadavg()[0], 2)),
    }
    print(
        records.format_table(
            ["attack", "ms / example", "× PGD-20", "success", "queries"],
            [
                [
                    r["attack"],
                    r["ms_per_example"],
                    r["cost_over_pgd20"],
                    r["success_rate"],
                    r["mean_queries"],
                ]
                for r in rows
            ],
            markdown=False,
        )
    )
    print(json.dumps(out, indent=2))
    if args.out:
        records.atomic_write_json(args.out, out)


if __name__ == "__main__":
    main()
