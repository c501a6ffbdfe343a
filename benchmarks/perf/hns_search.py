"""The batched HNS β search against a naive one that forms the N x N input Hessian.

Batched: ``attacks.hns().init(f, x, y)`` jitted (one Jacobian per example, the
Hessian's Frobenius norm in closed form from the ``d x d`` Gram matrix, every grid point
at once, vmapped over the batch), timed on ``--batch`` examples and divided by the batch.
Naive: the same grid rule written the slow way (``common.naive_hns_beta``, like the
authors' release): per example one Jacobian, then for each of the 100 grid temperatures
the ``N x N`` Hessian ``beta^2 J^T S J`` (N = H*W*C: 3072 at 32x32x3, 784 at 28x28x1) is
formed by a jitted function and its norm taken. Both are compiled before timing (the
naive one on a warm-up example); the naive search is timed on ``--naive-examples``
clean-correct examples (a misclassified example costs it nothing: β = 1). The record
holds both per-example times, the speedup, and whether both chose the same β on the
examples timed.

Run::

    python benchmarks/perf/hns_search.py --arch cnn cnn32 resnet18 \\
        --checkpoint runs/fmnist_cnn4_bnn_wq --batch 128 --naive-examples 4 --repeats 3
"""

from __future__ import annotations

import time

import common
import jax
import numpy as np

from qadv import attacks


def run_case(bench: common.Bench, *, batch: int, naive_examples: int, repeats: int) -> dict:
    f = bench.logits_fn
    x, y = bench.batch(batch)
    hns = attacks.hns()
    search = jax.jit(lambda f_, x_, y_: hns.init(f_, x_, y_))
    (t,) = common.time_calls([lambda: search(f, x, y)], repeats)
    fast_beta = np.asarray(t.result.beta)
    per_example = t.median_s / batch

    correct = np.flatnonzero(common.predictions(f, x) == np.asarray(y))
    picked = correct[: naive_examples + 1]
    if len(picked) < 2:
        raise ValueError(f"{bench.name}: fewer than 2 clean-correct examples in the batch")
    warm, timed = picked[0], picked[1:]
    t0 = time.perf_counter()
    warm_beta = common.naive_hns_beta(f, x[warm], y[warm])  # compiles
    naive_first = time.perf_counter() - t0
    naive_beta, naive_times = [], []
    for i in timed:
        t0 = time.perf_counter()
        naive_beta.append(common.naive_hns_beta(f, x[i], y[i]))
        naive_times.append(time.perf_counter() - t0)
    checked = np.concatenate([[warm], timed])
    naive_all = np.asarray([warm_beta, *naive_beta])
    agree = np.isclose(naive_all, fast_beta[checked], rtol=1e-3, atol=0.0)
    naive_median = float(np.median(naive_times))
    n_pixels = int(np.prod(x.shape[1:]))
    return {
        "model": bench.info,
        "image_shape": list(x.shape[1:]),
        "n_input": n_pixels,
        "classes": int(bench.info["classes"]),
        "grid_size": hns.grid_size,
        "batch": batch,
        "batched": {
            **t.as_dict(items=batch),
            "per_example_s": per_example,
            "per_example_best_s": t.min_s / batch,
        },
        "naive": {
            "examples_timed": [int(i) for i in timed],
            "times_s": naive_times,
            "per_example_s": naive_median,
            "first_call_s": naive_first,
            "hessian_bytes": n_pixels * n_pixels * 4,
        },
        "speedup_per_example": naive_median / per_example,
        "beta_checked_examples": [int(i) for i in checked],
        "beta_naive": naive_all.tolist(),
        "beta_batched": fast_beta[checked].tolist(),
        "betas_agree": int(agree.sum()),
        "betas_compared": len(agree),
        "all_betas_agree": bool(agree.all()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("hns_search", __doc__)
    p.add_argument("--arch", nargs="+", default=["cnn", "cnn32"], choices=list(common.MODELS))
    p.add_argument("--batch", type=int, default=128, help="examples in the batched search")
    p.add_argument("--naive-examples", type=int, default=4)
    args = p.parse_args(argv)
    rec = common.Record("hns_search", argv)

    cases = []
    for arch in args.arch:
        ckpt = args.checkpoint if arch == "cnn" else None
        bench = common.load_bench(arch, n=args.batch, checkpoint=ckpt)
        common.log(f"{arch} ({bench.info['model']}) ...")
        cases.append(
            run_case(
                bench,
                batch=args.batch,
                naive_examples=args.naive_examples,
                repeats=args.repeats,
            )
        )
    common.print_table(
        ["model", "input", "batched ms/ex", "naive ms/ex", "speedup", "same β"],
        [
            [
                c["model"]["name"],
                "x".join(map(str, c["image_shape"])),
                common.fmt(1e3 * c["batched"]["per_example_s"]),
                common.fmt(1e3 * c["naive"]["per_example_s"]),
                common.fmt(c["speedup_per_example"]),
                f"{c['betas_agree']}/{c['betas_compared']}",
            ]
            for c in cases
        ],
    )
    return rec.save(
        {
            "description": "per-example time of the batched, jitted HNS beta search against "
            "a naive search forming the N x N input Hessian at each of the grid points",
            "repeats": args.repeats,
            "cases": cases,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
