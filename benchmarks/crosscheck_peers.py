"""Cross-check of qadv's APGD-CE, APGD-T and Square against torchattacks on one model.

Run::

    .venv/bin/pip install torch==2.13.0 && .venv/bin/pip install torchattacks --no-deps
    .venv/bin/python benchmarks/crosscheck_peers.py --n 500 --out results/crosscheck_peers.json

(``pip install 'qadv[peers]'`` names the same packages; ``--no-deps`` keeps torchattacks
from pulling in torchvision and another torch build.) torch is needed by this script
only, never by qadv or its tests.

What it does:

1. trains a small MLP (784-256-256-10, ReLU) on real Fashion-MNIST in JAX, with PGD
   adversarial training at the evaluated ``eps`` so that robust accuracy lies well
   between 0 and the clean accuracy (a comparison at 0% would show nothing);
2. builds the same MLP in PyTorch with the same weights and checks that the two give the
   same logits (max |difference| below ``1e-4``) and the same predictions on the test
   images;
3. on the first ``--n`` test images runs each attack in both libraries with matched
   settings (eps, steps, restarts, target classes, query budget, ``p_init``, loss), and
   scores each the same way: robust = clean-correct and still correctly classified at
   the returned point (which is checked to lie in the eps-ball and in ``[0, 1]``);
4. prints and writes one JSON object: robust accuracy per attack for both libraries and
   their difference (the target is within 1 point), the examples broken by one library
   but not the other, wall times (qadv's include JIT compilation), the environment, the
   git commit and the command line.

qadv runs through :func:`qadv.evaluate.evaluate_attack` (the same code path as the CLI),
torchattacks through its public attack classes. Nothing is tuned to make the numbers
agree; the settings are the libraries' defaults where they share them (APGD: 100 steps,
``rho`` 0.75, momentum 0.75; APGD-T: 9 target classes; Square: 5,000 queries,
``p_init`` 0.8, margin loss).

Runtime on 2 shared CPU cores: the default L-inf run took about 1 minute with the
machine quiet and 10.5 minutes with it loaded; ``--norms linf l2`` took 28 minutes
loaded. Nearly all of that time is torchattacks, whose eager loops slow down sharply
when other processes share the cores (its Square alone took 9 s quiet and 6 to 12
minutes loaded). ``--queries 1000`` shortens Square.

Known differences of torchattacks 3.5.1 from qadv (and from the current AutoAttack):
its APGD/APGD-T follow an earlier AutoAttack release (checkpoints from integer windows,
random start on the surface of the L-inf box, restarts re-run on the still-robust
subset); its APGD-T compares the fraction of increasing steps with ``rho`` like APGD.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qadv import data, records
from qadv.attacks import registry
from qadv.evaluate import evaluate_attack

WIDTHS = (256, 256)
NUM_CLASSES = 10
LOGIT_TOLERANCE = 1e-4


def log(msg: str) -> None:
    print(f"[crosscheck {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model


def init_mlp(key, in_dim: int) -> list[tuple[jax.Array, jax.Array]]:
    """He-initialised dense layers ``in_dim -> 256 -> 256 -> 10``: ``[(w (i, o), b (o,))]``."""
    dims = (in_dim, *WIDTHS, NUM_CLASSES)
    params = []
    keys = jax.random.split(key, len(dims) - 1)
    for k, (i, o) in zip(keys, itertools.pairwise(dims), strict=True):
        w = jax.random.normal(k, (i, o), jnp.float32) * np.float32(np.sqrt(2.0 / i))
        params.append((w, jnp.zeros((o,), jnp.float32)))
    return params


def mlp_logits(params, x: jax.Array) -> jax.Array:
    """Images ``(B, H, W, C)`` in ``[0, 1]`` -> logits ``(B, 10)`` (row-major flatten)."""
    h = x.reshape(x.shape[0], -1)
    for w, b in params[:-1]:
        h = jax.nn.relu(h @ w + b)
    w, b = params[-1]
    return h @ w + b


def _pgd_train_batch(params, x, y, key, eps, steps):
    """PGD (L-inf, random start, step 2.5 eps / steps) for adversarial training."""

    def loss_x(z):
        return optax.softmax_cross_entropy_with_integer_labels(mlp_logits(params, z), y).sum()

    z = jnp.clip(x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps), 0.0, 1.0)
    for _ in range(steps):
        g = jax.grad(loss_x)(z)
        z = jnp.clip(jnp.clip(z + 2.5 * eps / steps * jnp.sign(g), x - eps, x + eps), 0.0, 1.0)
    return jax.lax.stop_gradient(z)


def train_mlp(x_train, y_train, *, eps, epochs, batch_size, pgd_steps, seed):
    """Adversarially trained MLP (Adam 1e-3, cosine decay); deterministic given ``seed``."""
    key = jax.random.key(seed)
    params = init_mlp(jax.random.fold_in(key, 0), int(np.prod(x_train.shape[1:])))
    steps_per_epoch = len(x_train) // batch_size
    opt = optax.adam(optax.cosine_decay_schedule(1e-3, epochs * steps_per_epoch))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, y, k):
        x_adv = _pgd_train_batch(params, x, y, k, eps, pgd_steps)

        def loss(p):
            logits = mlp_logits(p, x_adv)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        order = rng.permutation(len(x_train))
        losses = []
        for s in range(steps_per_epoch):
            idx = order[s * batch_size : (s + 1) * batch_size]
            k = jax.random.fold_in(key, 1 + epoch * steps_per_epoch + s)
            params, opt_state, value = step(
                params, opt_state, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]), k
            )
            losses.append(value)
        log(f"train epoch {epoch + 1}/{epochs}: adversarial loss {float(np.mean(losses)):.4f}")
    return params


def torch_mlp(params):
    """The same MLP in PyTorch: NCHW images -> NHWC flatten -> identical dense layers."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Linear(int(w.shape[0]), int(w.shape[1])) for w, _ in params]
            self.layers = nn.ModuleList(layers)

        def forward(self, x):
            h = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            for layer in self.layers[:-1]:
                h = torch.relu(layer(h))
            return self.layers[-1](h)

    model = MLP()
    with torch.no_grad():
        for layer, (w, b) in zip(model.layers, params, strict=True):
            layer.weight.copy_(torch.from_numpy(np.asarray(w).T.copy()))
            layer.bias.copy_(torch.from_numpy(np.asarray(b).copy()))
    return model.eval()


# --------------------------------------------------------------------------- attacks


@dataclasses.dataclass(frozen=True)
class Matched:
    """One attack with matched settings in both libraries."""

    name: str  # qadv registry name
    qadv_options: dict
    peer_class: str  # torchattacks class
    peer_options: dict


def matched_attacks(norm: str, eps: float, args) -> list[Matched]:
    peer_norm = {"linf": "Linf", "l2": "L2"}[norm]
    common = {"norm": norm, "eps": eps}
    return [
        Matched(
            "apgd-ce",
            {**common, "steps": args.steps, "restarts": args.restarts, "checkpoint_rho": 0.75},
            "APGD",
            {"norm": peer_norm, "eps": eps, "steps": args.steps, "n_restarts": args.restarts,
             "loss": "ce", "rho": 0.75, "seed": args.seed},
        ),
        Matched(
            "apgd-t",
            {**common, "steps": args.steps, "restarts": args.restarts,
             "n_targets": NUM_CLASSES - 1, "checkpoint_rho": 0.75},
            "APGDT",
            {"norm": peer_norm, "eps": eps, "steps": args.steps, "n_restarts": args.restarts,
             "n_classes": NUM_CLASSES, "rho": 0.75, "seed": args.seed},
        ),
        Matched(
            "square",
            {**common, "queries": args.queries, "p_init": 0.8, "restarts": 1, "loss": "margin"},
            "Square",
            {"norm": peer_norm, "eps": eps, "n_queries": args.queries, "n_restarts": 1,
             "p_init": 0.8, "loss": "margin", "resc_schedule": True, "seed": args.seed},
        ),
    ]  # fmt: skip


def run_qadv(logits_fn, x, y, m: Matched, seed: int) -> dict[str, Any]:
    config = registry.make(m.name, **m.qadv_options)
    rec = evaluate_attack(logits_fn, x, y, config, batch_size=len(x), seed=seed, progress=False)
    robust = np.asarray(rec["examples"]["robust"], bool)
    return {
        "label": rec["attack"],
        "config": rec["config"],
        "robust_accuracy": rec["robust_accuracy"],
        "clean_accuracy": rec["clean_accuracy"],
        "wall_time_s": rec["wall_time_s"],
        "queries_mean": rec["queries"].get("mean"),
        "robust": robust,
    }


def run_peer(model, logits_fn, x, y, m: Matched, norm: str, eps: float) -> dict[str, Any]:
    import torch
    import torchattacks

    from qadv.attacks import get_norm

    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    yt = torch.from_numpy(y.astype(np.int64))
    atk = getattr(torchattacks, m.peer_class)(model, **m.peer_options)
    t0 = time.perf_counter()
    adv = atk(xt, yt)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        clean_ok = (model(xt).argmax(1) == yt).numpy()
        adv_ok = (model(adv).argmax(1) == yt).numpy()
    x_adv = adv.detach().numpy().transpose(0, 2, 3, 1)
    geometry = get_norm(norm)
    in_ball = geometry.in_ball(x_adv, x, eps)
    # a point outside the ball or [0, 1] is no valid break: score it as not broken
    robust = clean_ok & (adv_ok | ~in_ball)
    # the same adversarials on the JAX model (parity of the two models at x_adv)
    jax_ok = np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), -1)) == y
    return {
        "class": f"torchattacks.{m.peer_class}",
        "options": m.peer_options,
        "robust_accuracy": 100.0 * float(robust.mean()),
        "clean_accuracy": 100.0 * float(clean_ok.mean()),
        "wall_time_s": seconds,
        "outside_ball": int((~in_ball).sum()),
        "max_distance": float(np.max(np.asarray(geometry.distance(x_adv, x)))),
        "robust_on_jax_model": 100.0 * float((clean_ok & jax_ok).mean()),
        "robust": robust,
    }


# ------------------------------------------------------------------------------ main


def main(argv=None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=500, help="first N test images")
    p.add_argument("--eps", type=float, default=0.1, help="L-inf radius")
    p.add_argument("--eps-l2", type=float, default=1.5, help="L2 radius (with --norms l2)")
    p.add_argument("--norms", nargs="+", default=["linf"], choices=["linf", "l2"])
    p.add_argument("--steps", type=int, default=100, help="APGD iterations")
    p.add_argument("--restarts", type=int, default=1, help="APGD restarts")
    p.add_argument("--queries", type=int, default=5000, help="Square query budget")
    p.add_argument("--epochs", type=int, default=5, help="adversarial training epochs")
    p.add_argument("--train-pgd-steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out", default="results/crosscheck_peers.json")
    args = p.parse_args(argv)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([sys.executable, sys.argv[0] if argv is None else __file__, *argv_used])

    import torch
    import torchattacks

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    x_tr, y_tr = data.load_split("fashion_mnist", "train")
    x_te, y_te = data.load_split("fashion_mnist", "test")
    x_tr = x_tr.astype(np.float32) / 255.0
    x_te = x_te.astype(np.float32) / 255.0
    y_tr, y_te = y_tr.astype(np.int32), y_te.astype(np.int32)
    log(f"Fashion-MNIST: train {x_tr.shape}, test {x_te.shape}")

    t0 = time.perf_counter()
    params = train_mlp(
        x_tr, y_tr, eps=args.eps, epochs=args.epochs, batch_size=128,
        pgd_steps=args.train_pgd_steps, seed=args.seed,
    )  # fmt: skip
    train_seconds = time.perf_counter() - t0
    logits_fn = jax.tree_util.Partial(mlp_logits, params)
    model = torch_mlp(params)

    # parity: same logits, same predictions on the whole test set
    lj = np.asarray(jax.jit(mlp_logits)(params, jnp.asarray(x_te)))
    with torch.no_grad():
        lt = model(torch.from_numpy(np.ascontiguousarray(x_te.transpose(0, 3, 1, 2)))).numpy()
    max_diff = float(np.max(np.abs(lj - lt)))
    same_pred = float(np.mean(lj.argmax(1) == lt.argmax(1)))
    test_acc = 100.0 * float(np.mean(lj.argmax(1) == y_te))
    log(f"JAX/torch logits max |diff| {max_diff:.2e}, same predictions {same_pred:.4f}, "
        f"clean test accuracy {test_acc:.2f}%")  # fmt: skip
    if not max_diff < LOGIT_TOLERANCE:
        raise SystemExit(f"JAX and torch logits differ by {max_diff:.3g} >= {LOGIT_TOLERANCE}")

    x, y = x_te[: args.n], y_te[: args.n]
    results = []
    for norm in args.norms:
        eps = args.eps if norm == "linf" else args.eps_l2
        for m in matched_attacks(norm, eps, args):
            log(f"{m.name} {norm} eps={eps:g}: qadv ...")
            q = run_qadv(logits_fn, x, y, m, args.seed)
            log(f"  qadv {q['label']}: robust {q['robust_accuracy']:.1f}% "
                f"({q['wall_time_s']:.1f} s); torchattacks.{m.peer_class} ...")  # fmt: skip
            r = run_peer(model, logits_fn, x, y, m, norm, eps)
            diff = q["robust_accuracy"] - r["robust_accuracy"]
            log(f"  torchattacks: robust {r['robust_accuracy']:.1f}% ({r['wall_time_s']:.1f} s); "
                f"qadv - torchattacks = {diff:+.1f} points")  # fmt: skip
            rq, rp = q.pop("robust"), r.pop("robust")
            results.append({
                "attack": m.name,
                "norm": norm,
                "eps": eps,
                "qadv": q,
                "torchattacks": r,
                "difference_points": diff,
                "within_1_point": bool(abs(diff) <= 1.0),
                "broken_by_qadv_only": int(np.sum(rp & ~rq)),
                "broken_by_torchattacks_only": int(np.sum(rq & ~rp)),
                "robust_under_both": 100.0 * float(np.mean(rq & rp)),
            })  # fmt: skip

    record = {
        "what": "qadv APGD-CE / APGD-T / Square vs torchattacks on the same MLP and images",
        "command": command,
        "git_commit": records.git_commit(),
        "n": len(x),
        "data": "Fashion-MNIST test images 0..n-1 (qadv.data.load_split)",
        "model": {
            "arch": f"MLP 784-{'-'.join(map(str, WIDTHS))}-10 ReLU",
            "training": f"PGD adversarial training, L-inf eps={args.eps}, "
            f"{args.train_pgd_steps} steps, {args.epochs} epochs, Adam 1e-3 cosine, batch 128",
            "train_seconds": train_seconds,
            "clean_test_accuracy_10k": test_acc,
            "jax_torch_max_abs_logit_diff": max_diff,
            "jax_torch_same_prediction_rate": same_pred,
        },
        "robust_accuracy_definition": "percent of the n images classified correctly "
        "and still correctly at the attack's returned point (inside the eps-ball and [0, 1])",
        "wall_time_note": "qadv times include JIT compilation; torchattacks runs eagerly",
        "results": results,
        "all_within_1_point": all(r["within_1_point"] for r in results),
        "environment": {
            **records.environment(),
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "torchattacks_version": torchattacks.__version__,
        },
        "total_seconds": time.perf_counter() - t_start,
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(args.out, record)
        log(f"wrote {args.out}")
    print(json.dumps(record, indent=2, default=float))
    return record


if __name__ == "__main__":
    main()
