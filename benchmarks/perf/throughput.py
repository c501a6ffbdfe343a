"""Attack throughput: PGD-20 against PGD++ NJS and PGD++ HNS, in images per second.

Times ``qadv.attacks.pgd`` (L∞, random start, ``--steps`` steps of ε/4; ε = 0.1 on the
28x28x1 Fashion-MNIST CNN, 8/255 on 32x32x3), plain and with the temperatures
``attacks.njs(f, x_calib)`` (built once from the first ``--calib`` images, outside the
timing) and ``attacks.hns()`` (its per-example β grid search runs inside every attack
call, as it does in use), for every ``--arch`` and ``--batch``. Each attack is called
once to compile, then ``--repeats`` times round-robin; the record holds median and min
times, images per second, the time ratios NJS/PGD and HNS/PGD, each attack's success
rate, and how many XLA compilations each call triggered (a second call with the same
model and shapes must compile nothing).

Run (see benchmarks/perf/README.md for the committed sizes)::

    python benchmarks/perf/throughput.py --arch cnn --checkpoint runs/fmnist_cnn4_bnn_wq \\
        --batch 128 1024 --repeats 3
"""

from __future__ import annotations

import common
import jax
import numpy as np

from qadv import attacks

ATTACKS = ("pgd", "pgd++ njs", "pgd++ hns")


def attack_fns(bench: common.Bench, x, y, *, steps: int, calib: int, seed: int = 0) -> dict:
    """The three attacks on one batch, as zero-argument calls (NJS calibrated here)."""
    f = bench.logits_fn
    njs = attacks.njs(f, bench.batch(min(calib, len(bench.x)))[0])
    hns = attacks.hns()
    kw = {
        "key": jax.random.key(seed),
        "eps": bench.eps,
        "step_size": bench.eps / 4,
        "steps": steps,
        "return_info": True,
    }
    return {
        "pgd": lambda: attacks.pgd(f, x, y, **kw),
        "pgd++ njs": lambda: attacks.pgd(f, x, y, temperature=njs, **kw),
        "pgd++ hns": lambda: attacks.pgd(f, x, y, temperature=hns, **kw),
    }


def run_case(bench: common.Bench, batch: int, *, steps: int, repeats: int, calib: int) -> dict:
    x, y = bench.batch(batch)
    fns = attack_fns(bench, x, y, steps=steps, calib=calib)
    timings = dict(zip(fns, common.time_calls(list(fns.values()), repeats), strict=True))
    rows = {}
    for name, t in timings.items():
        _, info = t.result
        rows[name] = {**t.as_dict(items=batch), "success_rate": float(np.mean(info.success))}
    pgd = timings["pgd"]
    return {
        "model": bench.info,
        "batch": batch,
        "steps": steps,
        "eps": bench.eps,
        "step_size": bench.eps / 4,
        "attacks": rows,
        "ratio_njs_over_pgd": timings["pgd++ njs"].median_s / pgd.median_s,
        "ratio_hns_over_pgd": timings["pgd++ hns"].median_s / pgd.median_s,
        "ratio_njs_over_pgd_min": timings["pgd++ njs"].min_s / pgd.min_s,
        "ratio_hns_over_pgd_min": timings["pgd++ hns"].min_s / pgd.min_s,
        "compiles_second_call": sum(t.compiles_second_call for t in timings.values()),
        "compiles_later_calls": sum(t.compiles_later_calls for t in timings.values()),
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("throughput", __doc__)
    p.add_argument("--arch", nargs="+", default=["cnn", "resnet18"], choices=list(common.MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[128, 1024])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--calib", type=int, default=100, help="NJS calibration images")
    p.add_argument(
        "--compute-dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="the model's weights and activations (logits and attack stay float32)",
    )
    args = p.parse_args(argv)
    rec = common.Record("throughput", argv)

    cases = []
    for arch in args.arch:
        ckpt = args.checkpoint if arch == "cnn" else None
        bench = common.load_bench(arch, n=max(args.batch), checkpoint=ckpt)
        if args.compute_dtype != "float32":
            from qadv.models import with_compute_dtype

            bench.logits_fn = with_compute_dtype(bench.logits_fn, args.compute_dtype)
            bench.info = {**bench.info, "compute_dtype": args.compute_dtype}
        for batch in args.batch:
            common.log(f"{arch} ({bench.info['model']}) batch {batch} ...")
            cases.append(
                run_case(bench, batch, steps=args.steps, repeats=args.repeats, calib=args.calib)
            )

    table = []
    for c in cases:
        for name in ATTACKS:
            a = c["attacks"][name]
            ratio = a["median_s"] / c["attacks"]["pgd"]["median_s"]
            table.append(
                [
                    c["model"]["name"],
                    c["batch"],
                    name,
                    common.fmt(a["images_per_s"]),
                    f"{ratio:.2f}",
                    f"{a['success_rate']:.2f}",
                    f"{a['compiles_first_call']}/{a['compiles_second_call']}",
                ]
            )
    common.print_table(
        ["model", "batch", "attack", "images/s", "time / PGD", "success", "compiles 1st/2nd"],
        table,
    )
    return rec.save(
        {
            "description": "attack throughput (images/s) of PGD, PGD++ NJS and PGD++ HNS; "
            "ratios are wall-time ratios (> 1: slower than PGD)",
            "repeats": args.repeats,
            "compute_dtype": args.compute_dtype,
            "cases": cases,
            "compiles_second_call": sum(c["compiles_second_call"] for c in cases),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
