"""PGD-20 against PGD++ HNS with d = 1000 classes: all classes against top-k.

The default model (``--arch trained``) is a small 32x32x3 CNN trained on a synthetic
``--classes``-way task (:func:`trained_bench`): a random-init network's logits have tiny,
unstructured gaps, and HNS then picks grid end points (``beta = 1``) for every example,
which would make any approximation look exact. ``--arch cnn32|resnet18`` are the
random-init models with a ``--classes`` head. For each ``--batch``: PGD-20 (L∞,
ε = 8/255, step ε/4) plain, with ``attacks.hns()`` (all ``d`` classes: ``d`` Jacobian
rows per example and ``d x d`` matrices at every grid point) and with
``attacks.hns(top_k=K)`` for each ``--top-k``, through ``qadv.attacks.pgd``: images per
second and the time ratio to PGD. The β search alone (``hns.init`` jitted) is timed too.
Top-k against all classes: the fraction of examples given the same β, the median and
maximum relative β error, and every attack's success rate. A configuration whose
compiled β search (XLA memory analysis) would not fit in 70% of the available memory is
not run; the record says so.

Run::

    python benchmarks/perf/d1000.py --classes 1000 --batch 8 32 --top-k 10 20 --repeats 3
"""

from __future__ import annotations

import dataclasses

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


def synthetic_task(classes: int, n: int, *, seed: int, shape=(32, 32, 3)):
    """``n`` images of a ``classes``-way task: one smooth random prototype per class
    (8x8x3 Gaussian noise, upsampled, squashed into ``[0, 1]``) plus pixel noise."""
    rng = np.random.default_rng(seed)
    proto = rng.normal(size=(classes, shape[0] // 4, shape[1] // 4, shape[2]))
    proto = 1.0 / (1.0 + np.exp(-2.0 * np.repeat(np.repeat(proto, 4, 1), 4, 2)))
    return proto.astype(np.float32), rng


def trained_bench(classes: int, n: int, *, steps: int, seed: int = 0) -> common.Bench:
    """The 32x32x3 toy CNN (``common.toy_cnn``'s architecture) with a ``classes``-way head,
    trained with Adam for ``steps`` steps of 128 images on :func:`synthetic_task`, so that
    its logits have the confident, structured top classes of a trained network; ``n``
    fresh test images with their true labels."""
    import optax

    proto, rng = synthetic_task(classes, n, seed=seed)

    def sample(m):
        y = rng.integers(0, classes, size=m)
        x = np.clip(proto[y] + 0.5 * rng.normal(size=(m, *proto.shape[1:])), 0.0, 1.0)
        return x.astype(np.float32), y.astype(np.int32)

    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    params = {
        "w1": jax.random.normal(k1, (3, 3, 3, 16)) / np.sqrt(27.0),
        "w2": jax.random.normal(k2, (3, 3, 16, 32)) / np.sqrt(144.0),
        "w3": jax.random.normal(k3, (8 * 8 * 32, classes)) / np.sqrt(2048.0),
    }
    dn = ("NHWC", "HWIO", "NHWC")

    def apply(params, x):
        z = jax.lax.conv_general_dilated(
            x - 0.5, params["w1"], (2, 2), "SAME", dimension_numbers=dn
        )
        z = jax.nn.relu(z)
        z = jax.lax.conv_general_dilated(z, params["w2"], (2, 2), "SAME", dimension_numbers=dn)
        return jax.nn.relu(z).reshape(x.shape[0], -1) @ params["w3"]

    tx = optax.adam(1e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss(p):
            return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

        g = jax.grad(loss)(params)
        upd, opt = tx.update(g, opt)
        return optax.apply_updates(params, upd), opt

    for _ in range(steps):
        params, opt = step(params, opt, *sample(128))
    f = jax.tree_util.Partial(apply, params)
    x, y = sample(n)
    pred = common.predictions(f, x)
    info = {
        "name": "toy32-trained",
        "arch": "toy CNN conv16/s2-conv32/s2-dense (float)",
        "model": f"trained {steps} Adam steps (batch 128) on a synthetic {classes}-class task",
        "classes": classes,
        "image_shape": [32, 32, 3],
        "data": "fresh samples of the synthetic task (labels: true classes)",
        "clean_accuracy_on_data": float(np.mean(pred == y)),
        "eval_mode": True,
        "eps": 8 / 255,
    }
    return common.Bench("toy32-trained", f, x, y, 8 / 255, info)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("d1000", __doc__, checkpoint=False)
    p.add_argument("--arch", default="trained", choices=["trained", "cnn32", "resnet18"])
    p.add_argument("--train-steps", type=int, default=600, help="Adam steps for --arch trained")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--batch", nargs="+", type=int, default=[8, 32])
    p.add_argument("--top-k", nargs="+", type=int, default=[10])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument(
        "--eps", type=float, default=None, help="L-inf radius (default: the model's, 8/255)"
    )
    args = p.parse_args(argv)
    rec = common.Record("d1000", argv)

    if args.arch == "trained":
        common.log(f"training the toy CNN on a synthetic {args.classes}-class task ...")
        bench = trained_bench(args.classes, max(args.batch), steps=args.train_steps)
    else:
        bench = common.load_bench(args.arch, n=max(args.batch), classes=args.classes)
    if args.eps is not None:
        bench = dataclasses.replace(bench, eps=float(args.eps))
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
