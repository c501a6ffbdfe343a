"""PGD-20 against PGD++ HNS with d = 1000 classes: all classes against top-k.

A 32x32x3 model (``--arch``: the CNN or ResNet-18, random init, eval mode) with its head
widened to ``--classes`` outputs (1000 by default, ImageNet's count) on uniform random
images labelled with its own predictions. For each ``--batch``: PGD-20 (L∞, ε = 8/255,
step ε/4) plain, with ``attacks.hns()`` (the HNS rule over all ``d`` classes: ``d``
Jacobian rows per example and ``d x d`` matrices at every grid point) and with
``attacks.hns(grid_size=100, top_k=K)`` for each ``--top-k`` (rows are skipped with a
note where qadv does not accept ``top_k``), through ``qadv.attacks.pgd``: images per
second and the time ratio to PGD. The β search alone (``hns.init`` jitted) is timed too.
Top-k against all classes: the fraction of examples given the same β, the median and
maximum relative β error, and every attack's success rate. A configuration whose
compiled β search (XLA memory analysis) would not fit in 70% of the available memory is
not run; the record says so.

Run::

    python benchmarks/perf/d1000.py --arch cnn32 --classes 1000 --batch 8 32 \\
        --top-k 10 20 --repeats 3
"""

from __future__ import annotations

import common
import jax
import numpy as np

from qadv import attacks


def strategies(top_ks: list[int]) -> dict:
    """``{"hns": hns(), "hns top-K": hns(top_k=K) or a skip note (str)}``."""
    out: dict = {"hns": attacks.hns()}
    for k in top_ks:
        try:
            out[f"hns top-{k}"] = attacks.hns(grid_size=100, top_k=k)
        except TypeError as e:
            out[f"hns top-{k}"] = f"skipped: attacks.hns does not accept top_k ({e})"
    return out


def run_case(bench: common.Bench, batch: int, top_ks: list[int], *, steps: int, repeats: int):
    f, eps = bench.logits_fn, bench.eps
    x, y = bench.batch(batch)
    kw = {
        "key": jax.random.key(0),
        "eps": eps,
        "step_size": eps / 4,
        "steps": steps,
        "return_info": True,
    }
    skipped: dict[str, str] = {}
    searches, fns = {}, {"pgd": lambda: attacks.pgd(f, x, y, **kw)}
    for name, s in strategies(top_ks).items():
        if isinstance(s, str):
            skipped[name] = s
            continue
        compiled = jax.jit(lambda f_, x_, y_, s=s: s.init(f_, x_, y_)).lower(f, x, y).compile()
        analysis = common.memory_analysis(compiled)
        if not common.fits_in_memory(analysis):
            need = common.gib((analysis or {}).get("temp_size_in_bytes"))
            skipped[name] = f"skipped: the beta search needs {need} of temporaries"
            continue
        searches[name] = (compiled, analysis)
        fns[f"pgd++ {name}"] = lambda s=s: attacks.pgd(f, x, y, temperature=s, **kw)
        fns[f"search {name}"] = lambda c=compiled: c(f, x, y)
    common.log(f"  timing {', '.join(fns)}")
    timings = dict(zip(fns, common.time_calls(list(fns.values()), repeats), strict=True))

    pgd = timings["pgd"]
    rows = {}
    for name, t in timings.items():
        row = t.as_dict(items=batch)
        if not name.startswith("search"):
            row["success_rate"] = float(np.mean(t.result[1].success))
            row["time_over_pgd"] = t.median_s / pgd.median_s
        rows[name] = row
    for name, (_, analysis) in searches.items():
        rows[f"search {name}"]["memory_analysis"] = analysis

    agreement = {}
    if "search hns" in timings:
        full = np.asarray(timings["search hns"].result.beta, np.float64)
        for name in searches:
            if name == "hns":
                continue
            approx = np.asarray(timings[f"search {name}"].result.beta, np.float64)
            rel = np.abs(approx - full) / np.abs(full)
            agreement[name] = {
                "same_beta_fraction": float(np.mean(np.isclose(approx, full, rtol=1e-5))),
                "median_relative_beta_error": float(np.median(rel)),
                "max_relative_beta_error": float(np.max(rel)),
                "beta_one_fraction_full": float(np.mean(full == 1.0)),
                "beta_one_fraction_top_k": float(np.mean(approx == 1.0)),
            }
    return {
        "model": bench.info,
        "batch": batch,
        "steps": steps,
        "eps": eps,
        "rows": rows,
        "top_k_against_all_classes": agreement,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("d1000", __doc__, checkpoint=False)
    p.add_argument("--arch", default="cnn32", choices=["cnn32", "resnet18"])
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--top-k", nargs="+", type=int, default=[10])
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    rec = common.Record("d1000", argv)

    bench = common.load_bench(args.arch, n=max(args.batch), classes=args.classes)
    cases = []
    for batch in args.batch:
        common.log(f"{args.arch} d={args.classes} batch {batch} ...")
        cases.append(run_case(bench, batch, args.top_k, steps=args.steps, repeats=args.repeats))

    table = []
    for c in cases:
        for name, r in c["rows"].items():
            agree = c["top_k_against_all_classes"].get(name.removeprefix("pgd++ "), {})
            table.append(
                [
                    c["batch"],
                    name,
                    common.fmt(r["images_per_s"]),
                    common.fmt(r.get("time_over_pgd")),
                    common.fmt(r.get("success_rate")),
                    common.fmt(agree.get("same_beta_fraction")),
                    common.fmt(agree.get("median_relative_beta_error")),
                ]
            )
        for name, why in c["skipped"].items():
            table.append([c["batch"], name, why, "", "", "", ""])
    common.print_table(
        ["batch", "call", "images/s", "time / PGD", "success", "same β", "median rel β err"],
        table,
    )
    return rec.save(
        {
            "description": f"PGD vs PGD++ HNS (all classes, top-k) at d={args.classes}; "
            "'search' rows time the beta search alone",
            "repeats": args.repeats,
            "cases": cases,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
