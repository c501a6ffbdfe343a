"""PGD-20 evaluation throughput on 1, 2, 4 and 8 devices, and identical results on each.

Times ``qadv.evaluate.evaluate_attack`` (the verified evaluation ``qadv evaluate`` runs:
clean predictions, the attack, the ε-ball check, the re-run of the model on the
returned images) with ``devices=jax.devices()[:k]``, which shards every batch over a
1-D mesh of ``k`` devices, on the first ``--n`` test images of the Fashion-MNIST CNN.
Each device count is run once to compile (and as the reference result), then
``--repeats`` timed runs. The record holds images per second per device count, the
speedup over one device, the compilations in the timed runs, and whether the robust
accuracy and every per-example result (robust, distance, queries) are identical to the
one-device run.

On a CPU the devices are XLA host devices: this script sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing JAX (unless
the flag is already set). They all share the machine's cores, so on a 2-core machine
the numbers show the overhead of sharding and that it is correct, not a speedup.

Run::

    python benchmarks/perf/scaling.py --checkpoint runs/fmnist_cnn4_bnn_wq \\
        --n 2048 --batch 256 --devices 1 2 4 8 --repeats 2
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count"
if _FLAG not in os.environ.get("XLA_FLAGS", "") and "jax" not in sys.modules:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" {_FLAG}=8").strip()

import common  # noqa: E402
import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402

from qadv.attacks import registry  # noqa: E402
from qadv.evaluate import evaluate_attack, predict  # noqa: E402
from qadv.evaluate.core import batch_placer  # noqa: E402

COMPARED = ("robust", "distance", "queries", "clean_correct")


def evaluate(f, bench: common.Bench, config, batch: int, devices: list):
    """``evaluate_attack`` on all the images, every batch sharded over ``devices``."""
    return evaluate_attack(
        f, bench.x, bench.y, config, batch_size=batch, devices=devices, progress=False
    )


def replicated(f, devices: list):
    """``f`` (a ``Partial``) with its weights replicated over a 1-D mesh of ``devices``."""
    try:
        from qadv import parallel
    except ImportError:  # older qadv
        mesh = jax.sharding.Mesh(np.asarray(devices), ("batch",))
        rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        return jax.tree.map(lambda a: jax.device_put(a, rep), f)
    return parallel.replicate(f, parallel.make_mesh(devices))


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("scaling", __doc__)
    p.add_argument("--devices", nargs="+", type=int, default=[1, 2, 4, 8])
    p.add_argument("--n", type=int, default=2048, help="test images evaluated")
    p.add_argument("--batch", type=int, default=256, help="evaluate_attack batch size")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    rec = common.Record("scaling", argv)

    bench = common.load_bench("cnn", n=args.n, checkpoint=args.checkpoint)
    config = registry.make("pgd", eps=bench.eps, steps=args.steps)
    available = jax.devices()
    rows, reference, skipped = [], None, []
    for k in args.devices:
        if k > len(available):
            skipped.append({"devices": k, "reason": f"only {len(available)} devices"})
            common.log(f"skip {k} devices: only {len(available)}")
            continue
        devices = available[:k]
        common.log(f"{k} device(s) ...")
        f, weights = bench.logits_fn, "as loaded"
        try:  # evaluate_attack's first step: clean predictions on a sharded batch
            predict(f, batch_placer(devices)(bench.x[:k])).block_until_ready()
        except ValueError as e:
            if "incompatible devices" not in str(e):
                raise
            # weights committed to one device (a restored checkpoint) cannot meet a batch
            # sharded over several: replicate them, as a multi-host `qadv evaluate` does
            f, weights = replicated(f, devices), f"replicated ({str(e).splitlines()[0]})"
            common.log(f"  {k} devices: weights replicated over the mesh")

        def run(f=f, devices=devices):
            return evaluate(f, bench, config, args.batch, devices)

        (t,) = common.time_calls([run], args.repeats)
        result = t.result
        if reference is None:
            reference = result
        same = {k_: result["examples"][k_] == reference["examples"][k_] for k_ in COMPARED}
        rows.append(
            {
                "devices": k,
                "weights": weights,
                "device_kinds": sorted({str(d.device_kind) for d in devices}),
                **t.as_dict(items=args.n),
                "robust_accuracy": result["robust_accuracy"],
                "clean_accuracy": result["clean_accuracy"],
                "identical_to_first": same,
                "all_identical": all(same.values())
                and result["robust_accuracy"] == reference["robust_accuracy"],
            }
        )
    base = rows[0]["median_s"] if rows else None
    for r in rows:
        r["speedup_over_first"] = base / r["median_s"]
    common.print_table(
        ["devices", "images/s", "speedup", "robust acc %", "identical", "compiles 2nd"],
        [
            [
                r["devices"],
                common.fmt(r["images_per_s"]),
                f"{r['speedup_over_first']:.2f}",
                f"{r['robust_accuracy']:.2f}",
                r["all_identical"],
                r["compiles_later_calls"],
            ]
            for r in rows
        ],
    )
    return rec.save(
        {
            "description": "PGD evaluation (qadv.evaluate.evaluate_attack) sharded over k "
            "devices; speedup relative to the first device count listed",
            "model": bench.info,
            "attack": config.label,
            "config": registry.to_dict(config),
            "n": args.n,
            "batch": args.batch,
            "repeats": args.repeats,
            "host_devices_share_cores": jax.default_backend() == "cpu",
            "rows": rows,
            "skipped": skipped,
            "all_identical": all(r["all_identical"] for r in rows),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
