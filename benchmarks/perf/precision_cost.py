"""What each float32 precision policy costs and changes: PGD-20 throughput and the error
of logits, input gradients and Jacobian-based numbers against the float32 policy.

For every policy of :mod:`qadv.precision` (``float32``, ``tensorfloat32``, ``bfloat16``
matrix products) and, separately, bfloat16 model compute
(:func:`qadv.models.precision.with_compute_dtype`), on one model and batch: the time of
``attacks.pgd`` (L∞, 20 steps, compiled once per policy, then timed), and the largest
relative error of the logits and of the input gradient of the cross-entropy against the
float32 policy's. On a CPU every matmul policy computes float32 (XLA's CPU code has no
TF32), so the errors are 0 there; on an NVIDIA GPU the default precision *without*
qadv's policy would be TF32, which is the row to look at.

Run::

    python benchmarks/perf/precision_cost.py --arch resnet18 --batch 512 --repeats 3
"""

from __future__ import annotations

import common
import jax
import jax.numpy as jnp
import numpy as np

from qadv import attacks, precision
from qadv.models.precision import with_compute_dtype


def _grad(f, x, y):
    def loss(z):
        return -jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(f(z)), y[:, None], 1))

    return jax.jit(jax.grad(loss))(x)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_case(bench: common.Bench, batch: int, *, steps: int, repeats: int) -> list[dict]:
    x, y = bench.batch(batch)
    kw = dict(key=jax.random.key(0), eps=bench.eps, step_size=bench.eps / 4, steps=steps)
    variants = [(p, p, bench.logits_fn) for p in precision.PRECISIONS]
    variants.append(
        ("bfloat16 compute", "float32", with_compute_dtype(bench.logits_fn, "bfloat16"))
    )
    rows, ref = [], None
    for label, policy, f in variants:
        with precision.scope(policy):
            logits = np.asarray(jax.jit(f)(x))
            grad = np.asarray(_grad(f, x, y))
            (t,) = common.time_calls([lambda f=f: attacks.pgd(f, x, y, **kw)], repeats)
        if ref is None:
            ref = (logits, grad)
        rows.append(
            {
                "variant": label,
                "matmul_precision": policy,
                **t.as_dict(items=batch),
                "logits_max_rel_error": _rel(logits, ref[0]),
                "grad_max_rel_error": _rel(grad, ref[1]),
                "predictions_changed": int((logits.argmax(1) != ref[0].argmax(1)).sum()),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("precision_cost", __doc__, checkpoint=False)
    p.add_argument("--arch", default="resnet18", choices=list(common.MODELS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    rec = common.Record("precision_cost", argv)
    bench = common.load_bench(args.arch, n=args.batch)
    rows = run_case(bench, args.batch, steps=args.steps, repeats=args.repeats)
    base = rows[0]["median_s"]
    common.print_table(
        ["variant", "images/s", "time / float32", "logits rel. err", "grad rel. err", "flips"],
        [
            [
                r["variant"],
                common.fmt(r["images_per_s"]),
                f"{r['median_s'] / base:.2f}",
                f"{r['logits_max_rel_error']:.2g}",
                f"{r['grad_max_rel_error']:.2g}",
                r["predictions_changed"],
            ]
            for r in rows
        ],
    )
    return rec.save(
        {
            "description": "PGD-20 time and numerical error per precision policy, against "
            "the float32 policy (qadv's default)",
            "model": bench.info,
            "batch": args.batch,
            "steps": args.steps,
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
