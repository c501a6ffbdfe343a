"""What unrolling the attack loop costs and gains on this backend: compile time and run
time of PGD-20 and PGD++ (HNS) at each unroll factor.

``qadv.attacks.gradient.run_attack`` runs the attack steps in a ``lax.scan`` whose body
holds ``cpu_unroll(...)`` steps: on a CPU, every step (up to 32) when a step convolves,
else ``CPU_UNROLL``. For each model of ``--arch`` and each factor of
``--unroll`` (``0`` = every step unrolled), this compiles ``attacks.pgd`` afresh (no
persistent compilation cache), then times ``--repeats`` calls. Every factor computes
the same steps; the table shows the compile seconds, the median run seconds and both
as ratios to the library's current factor.

Run::

    python benchmarks/perf/unroll.py --arch mlp cnn --batch 250 --unroll 1 2 4 8 0
"""

from __future__ import annotations

import time

import common
import jax
import numpy as np

from qadv import attacks
from qadv.attacks import gradient


def _compile_and_time(bench: common.Bench, batch: int, unroll: int, temperature, repeats: int):
    x, y = bench.batch(batch)
    steps = 20
    gradient.cpu_unroll = lambda step, state, n: min(unroll, n) if unroll > 0 else n
    jax.clear_caches()  # the traced inner functions would keep the last factor
    kw = dict(key=jax.random.key(0), eps=bench.eps, step_size=bench.eps / 4, steps=steps)
    fn = jax.jit(lambda x, y: attacks.pgd(bench.logits_fn, x, y, temperature=temperature, **kw))
    t0 = time.perf_counter()
    compiled = fn.lower(x, y).compile()
    compile_s = time.perf_counter() - t0
    (t,) = common.time_calls([lambda: compiled(x, y)], repeats)
    return compile_s, t, np.asarray(getattr(t.result, "x_adv", t.result))


def main(argv=None) -> dict:
    p = common.parser("unroll", __doc__, checkpoint=False)
    p.add_argument("--arch", nargs="+", default=["mlp", "cnn"], choices=sorted(common.MODELS))
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--unroll", nargs="+", type=int, default=[1, 2, 4, 8, 0])
    args = p.parse_args(argv)
    rec = common.Record("unroll", argv)
    jax.config.update("jax_enable_compilation_cache", False)
    current, rule = gradient.CPU_UNROLL, gradient.cpu_unroll
    rows = []
    try:
        for arch in args.arch:
            bench = common.load_bench(arch, n=args.batch)
            for label, temperature in (("PGD-20", None), ("PGD++ HNS", attacks.hns())):
                ref = None
                for k in args.unroll:
                    compile_s, t, x_adv = _compile_and_time(
                        bench, args.batch, k, temperature, args.repeats
                    )
                    ref = x_adv if ref is None else ref
                    rows.append(
                        {
                            "arch": arch,
                            "attack": label,
                            "unroll": k if k > 0 else "all",
                            "compile_s": compile_s,
                            "max_abs_diff_to_first": float(np.abs(x_adv - ref).max()),
                            **t.as_dict(items=args.batch),
                        }
                    )
                    common.log(
                        f"{arch} {label} unroll {k or 'all'}: compile {compile_s:.2f} s, "
                        f"run {t.median_s:.3f} s"
                    )
    finally:
        gradient.cpu_unroll = rule
    base = {(r["arch"], r["attack"]): r for r in rows if r["unroll"] == current}
    table = []
    for r in rows:
        b = base.get((r["arch"], r["attack"]))
        table.append(
            [
                r["arch"],
                r["attack"],
                r["unroll"],
                common.fmt(r["compile_s"]),
                common.fmt(r["median_s"]),
                common.fmt(r["compile_s"] / b["compile_s"]) if b else "-",
                common.fmt(r["median_s"] / b["median_s"]) if b else "-",
                common.fmt(r["max_abs_diff_to_first"]),
            ]
        )
    header = ["model", "attack", "unroll", "compile s", "run s"]
    header += [f"compile / unroll {current}", f"run / unroll {current}", "max |Δx_adv|"]
    common.print_table(header, table)
    return rec.save({"batch": args.batch, "current_unroll": current, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
