"""Step cost of every training mode relative to standard training, on one model and machine.

Run::

    python benchmarks/bench_training.py --arch cnn --policy ref --batch-size 128 \
        --out results/bench_training/cnn_ref.json

Each mode builds its train step exactly as ``qadv train`` does
(:func:`qadv.training.build_train_step`) on the
same model, optimizer, batch and machine: standard training, FastAT (one FGSM step),
PGD-7 adversarial training, input-gradient regularisation by finite differences and by
double backprop. Every step is compiled before timing; the time per step is the median
over ``--repeats`` rounds of ``--steps`` steps (one round of each mode in turn, so drifts
in machine load hit every mode alike). Prints one JSON object with absolute times and
each mode's ratio to standard training, plus the temporary buffer size XLA reserves
for each compiled step (``memory_analysis().temp_size_in_bytes``: activations kept for
the backward passes), and writes it with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qadv import records
from qadv.data import get_dataset_info
from qadv.training import TrainConfig, build_train_step

MODES = {
    "standard": {},
    "fastat": {"adv": "fastat"},
    "pgd7_at": {"adv": "pgd", "adv_steps": 7},
    "igr_fd": {"igr": "fd"},
    "igr_exact": {"igr": "exact"},
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="cnn")
    p.add_argument("--arch-opts", default="{}", help="JSON, e.g. '{\"widths\": [1024, 1024]}'")
    p.add_argument("--policy", default="ref")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per mode")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    info = get_dataset_info(args.dataset)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(args.batch_size, *info.image_shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, info.num_classes, size=args.batch_size).astype(np.int32))
    steps, states, temp = {}, {}, {}
    for mode, kw in MODES.items():
        config = TrainConfig(
            arch=args.arch,
            arch_opts=json.loads(args.arch_opts),
            policy=args.policy,
            dataset=args.dataset,
            adv_eps=0.1,
            **kw,
        )
        _, state, step = build_train_step(config, steps_per_epoch=100)
        compiled = step.lower(state, x, y, jnp.float32(1.0)).compile()
        mem = compiled.memory_analysis()
        temp[mode] = None if mem is None else int(mem.temp_size_in_bytes)
        t = time.perf_counter()
        state = jax.block_until_ready(step(state, x, y, jnp.float32(1.0)))  # compile
        steps[mode], states[mode] = step, state
        print(f"{mode}: compiled in {time.perf_counter() - t:.1f}s", flush=True)
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            state = states[mode]
            t = time.perf_counter()
            for _ in range(args.steps):
                state = steps[mode](state, x, y, jnp.float32(1.0))
            jax.block_until_ready(state)
            times[mode].append((time.perf_counter() - t) / args.steps)
            states[mode] = state
    median = {m: statistics.median(v) for m, v in times.items()}
    result = {
        "arch": args.arch,
        "arch_opts": json.loads(args.arch_opts),
        "policy": args.policy,
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "steps_per_round": args.steps,
        "repeats": args.repeats,
        "step_time_s": median,
        "relative_to_standard": {m: median[m] / median["standard"] for m in MODES},
        "igr_fd_over_exact": median["igr_fd"] / median["igr_exact"],
        "temp_bytes": temp,
        "temp_relative_to_standard": {
            m: (temp[m] / temp["standard"] if temp[m] and temp["standard"] else None) for m in MODES
        },
        "environment": records.environment(),
    }
    print(json.dumps(result, indent=2))
    print()
    print(f"{'mode':<10} {'ms/step':>9} {'× standard':>11} {'temp MiB':>9}")
    for m in MODES:
        mib = f"{temp[m] / 2**20:.1f}" if temp[m] is not None else "n/a"
        print(
            f"{m:<10} {1e3 * median[m]:>9.1f} {result['relative_to_standard'][m]:>11.2f} {mib:>9}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
