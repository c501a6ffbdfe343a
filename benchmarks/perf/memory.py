"""Memory: a streamed full-test-set evaluation, and the HNS β search at d = 10 to 1000.

(a) ``stream``: ``qadv.evaluate.evaluate_attack`` (PGD-20, L∞ ε = 0.1) over the first
``--n`` Fashion-MNIST test images (all 10,000 by default) with the CNN, in batches of
``--batch``. A background thread samples the process's RSS every few milliseconds; the
RSS is also read after every batch (through the progress-bar hook evaluate_attack
calls after each batch), and reported after every ``--every`` attacked images, to show
that it stays flat however many images are streamed. Device memory
(``jax.devices()[0].memory_stats()``) is recorded where the backend has it (``null`` on
CPU).

(b) ``hns``: the HNS β search ``attacks.hns().init`` jitted, for a 32x32x3 CNN with
``d`` = each of ``--classes`` outputs (random init) at each ``--hns-batch``: XLA's
compiled memory analysis (temporary buffers, arguments, outputs) and, where that fits
in the memory available, the peak RSS increase while it runs once. With ``--top-k``,
the same for ``attacks.hns(top_k=K)`` (skipped with a note where qadv does not have it).

Run::

    python benchmarks/perf/memory.py --checkpoint runs/fmnist_cnn4_bnn_wq --n 10000 \\
        --classes 10 100 1000 --hns-batch 8 64 --top-k 10
"""

from __future__ import annotations

import time
from unittest import mock

import common
import jax

from qadv import attacks
from qadv.attacks import registry
from qadv.evaluate import core, evaluate_attack


class _RSSBar:
    """Stands in for evaluate_attack's progress bar: records RSS after every batch."""

    def __init__(self):
        self.done = 0
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        self.rows.append(
            {
                "batches": self.done,
                "rss_bytes": common.rss_bytes(),
                "seconds": time.perf_counter() - self.t0,
            }
        )

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass


def stream(args) -> dict:
    bench = common.load_bench("cnn", n=args.n, checkpoint=args.checkpoint)
    config = registry.make("pgd", eps=bench.eps, steps=args.steps)
    bars: list[_RSSBar] = []

    def bar(total, desc, enabled):
        bars.append(_RSSBar())
        return bars[-1]

    rss_loaded = common.rss_bytes()
    dev_before = common.device_memory()
    with mock.patch.object(core, "progress_bar", bar), common.RSSSampler() as sampler:
        rec = evaluate_attack(
            bench.logits_fn, bench.x, bench.y, config, batch_size=args.batch, progress=True
        )
    attacked = rec["attacked"]
    per_batch = bars[0].rows if bars else []
    for r in per_batch:
        r["attacked_images"] = min(r["batches"] * args.batch, attacked)
    checkpoints, mark = [], args.every
    for r in per_batch:
        if r["attacked_images"] >= mark or r is per_batch[-1]:
            checkpoints.append(r)
            while mark <= r["attacked_images"]:
                mark += args.every
    first, last = (checkpoints[0], checkpoints[-1]) if checkpoints else (None, None)
    return {
        "model": bench.info,
        "attack": config.label,
        "n": args.n,
        "batch": args.batch,
        "attacked": attacked,
        "robust_accuracy": rec["robust_accuracy"],
        "wall_time_s": rec["wall_time_s"],
        "rss_after_loading_bytes": rss_loaded,
        "rss_start_bytes": sampler.start,
        "rss_peak_bytes": sampler.peak,
        "rss_end_bytes": sampler.end,
        "rss_at": checkpoints,
        "rss_per_batch": per_batch,
        "rss_growth_first_to_last_bytes": None
        if first is None
        else last["rss_bytes"] - first["rss_bytes"],
        "device_memory_before": dev_before,
        "device_memory_after": common.device_memory(),
    }


def hns_strategy(top_k: int | None):
    """``attacks.hns()`` or ``attacks.hns(top_k=K)``; ``None`` if qadv has no ``top_k``."""
    if top_k is None:
        return attacks.hns()
    try:
        return attacks.hns(grid_size=100, top_k=top_k)
    except TypeError:
        return None


def hns_case(bench: common.Bench, batch: int, top_k: int | None, *, run: bool) -> dict:
    row = {"classes": bench.info["classes"], "batch": batch, "top_k": top_k}
    strategy = hns_strategy(top_k)
    if strategy is None:
        return {**row, "skipped": "attacks.hns does not accept top_k in this qadv"}
    f = bench.logits_fn
    x, y = bench.batch(batch)
    fn = jax.jit(lambda f_, x_, y_: strategy.init(f_, x_, y_))
    t0 = time.perf_counter()
    compiled = fn.lower(f, x, y).compile()
    row["compile_s"] = time.perf_counter() - t0
    row["memory_analysis"] = common.memory_analysis(compiled)
    if not run:
        return row
    if not common.fits_in_memory(row["memory_analysis"]):
        avail = common.available_memory_bytes()
        row["skipped_run"] = f"needs more than 70% of the {common.gib(avail)} available"
        return row
    with common.RSSSampler() as s:
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(f, x, y))
        row["run_s"] = time.perf_counter() - t0
    row["rss_peak_increase_bytes"] = s.peak - s.start
    row["device_memory"] = common.device_memory()
    return row


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("memory", __doc__)
    p.add_argument("--parts", nargs="+", default=["stream", "hns"], choices=["stream", "hns"])
    p.add_argument("--n", type=int, default=10000, help="test images streamed")
    p.add_argument("--batch", type=int, default=250, help="evaluate_attack batch size")
    p.add_argument("--every", type=int, default=1000, help="report RSS every this many")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--classes", nargs="+", type=int, default=[10, 100, 1000])
    p.add_argument("--hns-batch", nargs="+", type=int, default=[8, 64])
    p.add_argument("--top-k", nargs="*", type=int, default=[], help="also HNS with top_k=K")
    p.add_argument("--no-run", action="store_true", help="HNS: memory analysis only")
    args = p.parse_args(argv)
    rec = common.Record("memory", argv)
    results: dict = {}

    if "stream" in args.parts:
        common.log(f"stream: evaluate_attack over {args.n} images ...")
        s = stream(args)
        results["stream"] = s
        common.print_table(
            ["attacked images", "RSS", "seconds"],
            [
                [r["attacked_images"], common.gib(r["rss_bytes"]), f"{r['seconds']:.1f}"]
                for r in s["rss_at"]
            ],
        )
        print(
            f"stream: peak RSS {common.gib(s['rss_peak_bytes'])}, growth first->last "
            f"{common.gib(s['rss_growth_first_to_last_bytes'])}"
        )
    if "hns" in args.parts:
        rows = []
        for d in args.classes:
            bench = common.load_bench("cnn32", n=max(args.hns_batch), classes=d)
            for batch in args.hns_batch:
                for k in [None, *args.top_k]:
                    common.log(f"hns: d={d} batch={batch} top_k={k} ...")
                    rows.append(hns_case(bench, batch, k, run=not args.no_run))
        results["hns"] = {"model": {**bench.info, "classes": args.classes}, "rows": rows}
        common.print_table(
            ["d", "batch", "top_k", "XLA temp", "XLA args+out", "RSS peak +", "run s"],
            [
                [
                    r["classes"],
                    r["batch"],
                    r["top_k"] or "all",
                    common.gib((r.get("memory_analysis") or {}).get("temp_size_in_bytes")),
                    common.gib(
                        None
                        if not r.get("memory_analysis")
                        else r["memory_analysis"]["argument_size_in_bytes"]
                        + r["memory_analysis"]["output_size_in_bytes"]
                    ),
                    common.gib(r.get("rss_peak_increase_bytes")),
                    common.fmt(r.get("run_s")),
                ]
                for r in rows
            ],
        )
    return rec.save(
        {
            "description": "host RSS and device memory of a streamed evaluation, and XLA's "
            "memory analysis plus peak RSS of the HNS beta search at d classes",
            **results,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
