"""qadv's PGD against foolbox 3's LinfPGD on the very same JAX model and batch.

qadv: ``qadv.attacks.pgd`` (L∞, random start, ``--steps`` steps of ε/4), one jitted
program. foolbox: ``foolbox.attacks.LinfPGD(steps, abs_stepsize=ε/4,
random_start=True)`` on the model wrapped by ``qadv.interop.foolbox.to_foolbox``
(``fb.JAXModel(logits_fn, bounds=(0, 1))`` around the jitted model), run through
``qadv.interop.foolbox.run_foolbox_attack``; foolbox drives its loop in Python through
eagerpy, op by op. Both attack the same images with the same ε (0.1 on the 28x28x1
Fashion-MNIST CNN), are called once to warm up (compile), then ``--repeats`` times
round-robin. The record holds images per second, the qadv/foolbox speed ratio, and as a
sanity check both attacks' robust accuracy on that batch (clean-correct and still
correct on the returned image, which is checked to lie in the ε-ball).

foolbox is optional: without it this prints one line and writes a record that says
``skipped``.

Run::

    python benchmarks/perf/foolbox_pgd.py --checkpoint runs/fmnist_cnn4_bnn_wq \\
        --batch 16 256 1024 --repeats 3
"""

from __future__ import annotations

import common
import jax
import numpy as np

from qadv import attacks

MISSING = "foolbox is not installed: pip install 'qadv[foolbox]'"


def robust_accuracy(f, x, y, x_adv, eps: float) -> float:
    """Fraction clean-correct and still correct on ``x_adv`` (checked to be in the ball)."""
    x, y, x_adv = np.asarray(x), np.asarray(y), np.asarray(x_adv)
    dist = float(np.abs(x_adv - x).max())
    if dist > eps + 1e-6 or x_adv.min() < 0 or x_adv.max() > 1:
        raise RuntimeError(f"adversarial images outside the ε-ball or [0, 1] (L∞ {dist:.4g})")
    clean = common.predictions(f, x) == y
    adv = common.predictions(f, x_adv) == y
    return float(np.mean(clean & adv))


def run_case(bench: common.Bench, fb, batch: int, *, steps: int, repeats: int) -> dict:
    from qadv.interop.foolbox import run_foolbox_attack, to_foolbox

    f, eps = bench.logits_fn, bench.eps
    x, y = bench.batch(batch)
    fmodel = to_foolbox(f, bounds=(0, 1))
    fb_attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=eps / 4, random_start=True)
    key = jax.random.key(0)
    t_qadv, t_fb = common.time_calls(
        [
            lambda: attacks.pgd(f, x, y, key=key, eps=eps, step_size=eps / 4, steps=steps),
            lambda: run_foolbox_attack(fmodel, fb_attack, x, y, eps),
        ],
        repeats,
    )
    return {
        "model": bench.info,
        "batch": batch,
        "steps": steps,
        "eps": eps,
        "step_size": eps / 4,
        "qadv": {
            **t_qadv.as_dict(items=batch),
            "robust_accuracy": robust_accuracy(f, x, y, t_qadv.result, eps),
        },
        "foolbox": {
            **t_fb.as_dict(items=batch),
            "robust_accuracy": robust_accuracy(f, x, y, t_fb.result.x_adv, eps),
        },
        "speed_ratio_qadv_over_foolbox": t_fb.median_s / t_qadv.median_s,
        "speed_ratio_qadv_over_foolbox_min": t_fb.min_s / t_qadv.min_s,
    }


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("foolbox_pgd", __doc__)
    p.add_argument("--arch", default="cnn", choices=list(common.MODELS))
    p.add_argument("--batch", nargs="+", type=int, default=[16, 256, 1024])
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    rec = common.Record("foolbox_pgd", argv)
    fb, skipped = rec.import_peer("foolbox", MISSING, args.out)
    if skipped is not None:
        return skipped

    ckpt = args.checkpoint if args.arch == "cnn" else None
    bench = common.load_bench(args.arch, n=max(args.batch), checkpoint=ckpt)
    cases = []
    for batch in args.batch:
        common.log(f"{args.arch} ({bench.info['model']}) batch {batch} ...")
        cases.append(run_case(bench, fb, batch, steps=args.steps, repeats=args.repeats))
    common.print_table(
        [
            "batch",
            "qadv images/s",
            "foolbox images/s",
            "qadv / foolbox",
            "robust qadv",
            "robust fb",
        ],
        [
            [
                c["batch"],
                common.fmt(c["qadv"]["images_per_s"]),
                common.fmt(c["foolbox"]["images_per_s"]),
                common.fmt(c["speed_ratio_qadv_over_foolbox"]),
                f"{c['qadv']['robust_accuracy']:.3f}",
                f"{c['foolbox']['robust_accuracy']:.3f}",
            ]
            for c in cases
        ],
    )
    return rec.save(
        {
            "description": "qadv.attacks.pgd against foolbox 3 LinfPGD on the same JAX model, "
            "batch and machine; speed ratio = foolbox time / qadv time",
            "foolbox_version": fb.__version__,
            "repeats": args.repeats,
            "cases": cases,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
