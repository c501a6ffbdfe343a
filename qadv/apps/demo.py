"""The main job: does binarisation give *fake* robustness on real Fashion-MNIST?

``qadv demo`` trains two networks of the same shape on Fashion-MNIST, a float MLP and a
BNN-WQ MLP (3 × 1024 hidden units, BinaryConnect, every layer ±1, BatchNorm without
affine; 15 epochs each), and then, for each model:

1. runs the gradient-masking report (:mod:`qadv.evaluate.masking`) at Fashion-MNIST's
   usual L∞ budget ε = 0.1: accuracy against ε (PGD against PGD++ and a margin-loss PGD,
   from 2/255 up to where everything breaks), against iterations, the step-size sweep,
   transfer from the float model, Square, and the AutoAttack-style checks, each with a
   verdict and its reason;
2. runs an AutoAttack-style ensemble (APGD-CE, APGD-T and FAB-T with 3 target classes,
   Square with 1,000 queries) at ε = 0.1 and at the paper's CIFAR-10 budget ε = 8/255;
3. writes ``report.md``, opening with a one-paragraph verdict computed from the numbers:
   whether the binarised model looks robust under PGD, which checks flag it, and what
   breaks it, beside the float model.

Everything resumes: trained models are reused, finished attacks are read back, and an
interrupted attack resumes from its partial results.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import data, records, signal
from qadv.attacks import AttackContext, registry
from qadv.checkpoint import load_checkpoint
from qadv.evaluate import diagnose, evaluate_ensemble
from qadv.evaluate.masking import SUSPECTED, MaskingConfig, masking_report
from qadv.training import TrainConfig, make_policy, train

__all__ = ["DEMO_EPS", "DEMO_MODELS", "demo_masking_config", "run_demo"]

_MLP = dict(dataset="fashion_mnist", arch="mlp", arch_opts={"widths": (1024, 1024, 1024)})

#: The demo's two models: same shape, float against binary weights (about 2 min each on
#: 2 CPU cores).
DEMO_MODELS: dict[str, TrainConfig] = {
    "float": TrainConfig(policy="ref", epochs=15, lr=1e-3, **_MLP),
    "bnn_wq": TrainConfig(policy="bnn_wq", epochs=15, lr=1e-3, **_MLP),
}

#: The budgets reported in the table: the paper's CIFAR-10 L∞ budget and Fashion-MNIST's
#: usual one. The masking verdicts speak about the last.
DEMO_EPS: dict[str, float] = {"paper's CIFAR-10 budget": 8 / 255, "Fashion-MNIST budget": 0.1}

#: Radii of the accuracy-against-ε curves (ε keeps doubling past the last while PGD leaves
#: robust examples).
_EPS_GRID = (2 / 255, 4 / 255, 8 / 255, 16 / 255, 0.1, 0.2, 0.4)


def demo_masking_config(*, batch_size: int = 250, seed: int = 0) -> MaskingConfig:
    """The masking-report settings of the demo: L∞, ε = 0.1, PGD-20 (η = ε/4), 200-step
    iteration curve, ε from 2/255 upwards, Square with 1,000 queries."""
    eps = DEMO_EPS["Fashion-MNIST budget"]
    return MaskingConfig(
        norm="linf",
        eps=eps,
        steps=20,
        eps_factors=tuple(e / eps for e in _EPS_GRID),
        square_queries=1000,
        batch_size=batch_size,
        seed=seed,
    )


def run_demo(
    out_dir: str | Path = "runs/demo",
    *,
    n: int = 500,
    epochs: int | None = None,
    data_dir: str | Path | None = None,
    batch_size: int = 250,
    progress: bool = True,
    models: dict[str, TrainConfig] | None = None,
    masking: MaskingConfig | None = None,
    eps: dict[str, float] | None = None,
    ensemble: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train (or reuse) the demo models, run the masking reports and ensembles, and write
    ``report.md`` and ``demo.json``.

    Args:
        out_dir: folder for models (``<out>/<name>``), reports and results.
        n: number of test images evaluated (the first ``n``, in order).
        epochs: override every model's training epochs.
        data_dir: folder with the Fashion-MNIST IDX files (default: Debian package).
        batch_size: attack batch size.
        progress: show progress bars.
        models: training configs by name (default :data:`DEMO_MODELS`); the first float
            (``policy="ref"``) model is the surrogate of the transfer check and the
            reference of the verdict.
        masking: masking-report settings (default :func:`demo_masking_config`).
        eps: table budgets by name (default :data:`DEMO_EPS`).
        ensemble: options of the ``standard`` ensemble preset's members (default
            ``{"queries": 1000, "n_targets": 3}``: Square with 1,000 queries, APGD-T and
            FAB-T with the 3 most likely target classes; CPU-sized).
        seed: example ``i`` of the test set uses the key ``fold_in(key(seed), i)``.

    Returns:
        ``{"verdict": paragraph, "table": markdown, "masking": {model: report},
        "ensembles": {model: {eps name: record}}, "wall_time_s": ...}``.
    """
    t0 = time.time()
    with records.CompileClock() as clock:
        out_dir = Path(out_dir)
        models = dict(DEMO_MODELS if models is None else models)
        if epochs is not None:
            models = {k: dataclasses.replace(c, epochs=epochs) for k, c in models.items()}
        eps = dict(DEMO_EPS if eps is None else eps)
        ensemble = {"queries": 1000, "n_targets": 3} if ensemble is None else dict(ensemble)
        masking = masking if masking is not None else demo_masking_config(batch_size=batch_size)
        masking.validate()
        dataset = {c.dataset for c in models.values()}
        if len(dataset) != 1:
            raise ValueError(f"demo models must share one dataset, got {sorted(dataset)}")
        floats = [k for k, c in models.items() if make_policy(c.quant).is_float]
        images, labels = _test_images(dataset.pop(), n, data_dir)

        trained, loaded = {}, {}
        for name, config in models.items():
            trained[name] = train(config, out_dir / name, data_dir=data_dir, progress=progress)
            loaded[name] = load_checkpoint(out_dir / name)

        reports, ensembles, diagnostics = _measure(
            loaded,
            floats,
            images,
            labels,
            masking=masking,
            eps=eps,
            ensemble=ensemble,
            batch_size=batch_size,
            seed=seed,
            out_dir=out_dir,
            progress=progress,
        )

        table, rows = _table(models, reports, ensembles, eps)
        _plots(out_dir, models, reports, loaded, images, labels)
        verdict = _verdict(models, reports, ensembles, floats, masking, eps)
    wall = time.time() - t0
    timing = clock.as_dict(wall)
    _write(
        out_dir,
        verdict,
        (table, rows),
        models,
        trained,
        reports,
        diagnostics,
        n,
        timing,
        masking,
        ensemble,
    )
    return {
        "verdict": verdict,
        "table": table,
        "masking": reports,
        "ensembles": ensembles,
        "wall_time_s": wall,
        "timing": timing,
    }


def _test_images(dataset: str, n: int, data_dir) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test images of ``dataset`` in [0, 1] and their labels."""
    test_x, test_y = data.load_split(dataset, "test", data_dir=data_dir)
    if not 1 <= n <= len(test_x):
        raise ValueError(f"bad n {n}; the test set has {len(test_x)} images")
    return test_x[:n].astype(np.float32) / np.float32(255.0), test_y[:n].astype(np.int32)


def _write(
    out_dir,
    verdict,
    table_rows,
    models,
    trained,
    reports,
    diagnostics,
    n,
    timing,
    masking,
    ensemble,
) -> None:
    """Write ``report.md`` and ``demo.json``."""
    table, rows = table_rows
    env = records.environment()
    text = _markdown(
        verdict, table, models, trained, reports, diagnostics, n, timing, env, masking, ensemble
    )
    (out_dir / "report.md").write_text(text)
    records.atomic_write_json(
        out_dir / "demo.json",
        {
            "n": n,
            "verdict": verdict,
            "table": rows,
            "masking": {
                k: {"verdict": r["verdict"], "checks": r["checks"]} for k, r in reports.items()
            },
            "diagnostics": diagnostics,
            "wall_time_s": timing["wall_time_s"],
            "timing": timing,
            "environment": env,
        },
    )


def _measure(
    loaded: dict[str, Any],
    floats: list[str],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    masking: MaskingConfig,
    eps: dict[str, float],
    ensemble: dict[str, Any],
    batch_size: int,
    seed: int,
    out_dir: Path,
    progress: bool,
) -> tuple[dict, dict, dict]:
    """The masking report, signal diagnostics and ``standard`` ensemble at every table
    budget of each loaded model: ``(reports, ensembles, diagnostics)``, each by model."""
    reports, ensembles, diagnostics = {}, {}, {}
    for name, m in loaded.items():
        surrogate = loaded[floats[0]].logits_fn if floats and name != floats[0] else None
        context = AttackContext(calib_images=images, input_std=tuple(m.metadata["std"]))
        reports[name] = masking_report(
            m.logits_fn,
            images,
            labels,
            config=masking,
            surrogate=surrogate,
            context=context,
            out_dir=out_dir / "masking" / name,
            progress=progress,
            name=name,
        )
        diagnostics[name] = diagnose(m.logits_fn, images, labels)
        ensembles[name] = {}
        for label, e in eps.items():
            ensembles[name][label] = evaluate_ensemble(
                m.logits_fn,
                images,
                labels,
                registry.preset("standard", norm="linf", eps=e, **ensemble),
                name="standard",
                batch_size=batch_size,
                seed=seed,
                context=context,
                out=out_dir / "results" / name / f"standard_eps{e:.6g}.json",
                progress=progress,
            )
    return reports, ensembles, diagnostics


def _curve_at(r: dict, name: str, e: float) -> float | None:
    """A masking report's ε-curve value of ``name`` at radius ``e`` (None if not run)."""
    d = next(v for v in r["checks"] if v["name"] == "epsilon")["data"]
    for radius, acc in zip(d["eps"], d["curves"].get(name, []), strict=False):
        if abs(radius - e) < 1e-9:
            return acc
    return None


def _radius(e: float) -> str:
    k = e * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{e:g}"


def _table(models, reports, ensembles, eps) -> tuple[str, list]:
    attacks = ["PGD", "PGD++ (NJS)", "PGD++ (HNS)", "PGD (CW margin)"]
    header = ["model", "ε", "clean", *attacks, "Square", "ensemble"]
    rows = []
    for name in models:
        r = reports[name]
        for label, e in eps.items():
            accs = [_curve_at(r, a, e) for a in attacks]
            square = r["robust_accuracy"].get("Square") if e == r["eps"] else None
            ens = ensembles[name][label]["robust_accuracy"]
            rows.append([name, f"{_radius(e)} ({label})", r["clean_accuracy"], *accs, square, ens])
    body = records.format_table(header, [["–" if v is None else v for v in row] for row in rows])
    return body, rows


def _plots(out_dir: Path, models, reports, loaded, images, labels) -> None:
    curves, iters = {}, {}
    for name in models:
        checks = {v["name"]: v["data"] for v in reports[name]["checks"]}
        d = checks["epsilon"]
        for k in ("PGD", "PGD++ (NJS)"):
            curves[f"{name}: {k}"] = (np.asarray(d["eps"]) * 255, d["curves"][k])
        c = checks["iterations"]["curve"]
        iters[f"{name}: PGD"] = (np.arange(1, len(c)), c[1:])
    records.plot_curves(
        out_dir / "accuracy_vs_eps.png",
        curves,
        xlabel="ε (×1/255, L∞)",
        ylabel="robust accuracy (%)",
        title="Accuracy against ε: PGD against PGD++",
    )
    records.plot_curves(
        out_dir / "accuracy_vs_iterations.png",
        iters,
        xlabel="PGD iterations (ε = 0.1)",
        ylabel="robust accuracy (%)",
        title="Accuracy against PGD iterations",
        logx=True,
    )
    hess = {name: _hessian_curve(m.logits_fn, images, labels) for name, m in loaded.items()}
    records.plot_curves(
        out_dir / "hessian_norm_vs_beta.png",
        {k: v for k, v in hess.items() if len(v[0])},
        xlabel="β",
        ylabel="‖∂²ℓ(β)/∂x²‖_F",
        title="Input-Hessian norm against temperature (one test image)",
        logx=True,
        logy=True,
    )


def _hessian_curve(logits_fn, images, labels) -> tuple[np.ndarray, np.ndarray]:
    """Hessian norm over a log-spaced β range for the first correctly classified image
    with the largest top-1 lead among the first 50 (paper Fig. 4b)."""
    logits = np.asarray(logits_fn(jnp.asarray(images[:50])))
    hits = np.flatnonzero(logits.argmax(-1) == labels[:50])
    if not len(hits):
        return np.zeros(0), np.zeros(0)
    gaps = np.asarray(signal.logit_gap(jnp.asarray(logits)))[hits]
    i = int(hits[np.argmax(gaps)])
    betas = np.logspace(-4, 1, 120).astype(np.float32)
    norms = jax.jit(lambda x, y: signal.hessian_norm(logits_fn, x, y, jnp.asarray(betas)))(
        jnp.asarray(images[i : i + 1]), jnp.asarray(labels[i : i + 1])
    )
    return betas, np.asarray(norms)[0]


def _policy_text(c: TrainConfig) -> str:
    return make_policy(c.quant).label


def _flagged(r: dict) -> list[str]:
    return [v["name"] for v in r["checks"] if v["status"] == SUSPECTED]


def _verdict(models, reports, ensembles, floats, masking: MaskingConfig, eps) -> str:
    """One paragraph, computed from the numbers: is there fake robustness, and where?"""
    e = masking.eps
    label = next((k for k, v in eps.items() if abs(v - e) < 1e-12), None)
    ref = floats[0] if floats else None
    parts = []
    for name in models:
        if name == ref:
            continue
        r = reports[name]
        pgd = r["robust_accuracy"]["PGD"]
        worst = r["robust_accuracy"]["worst case over all"]
        ens = ensembles[name][label]["robust_accuracy"] if label else None
        best = min(v for v in (worst, ens) if v is not None)
        flagged = _flagged(r)
        where = f"at ε = {e:.3g} (L∞, {r['n']} test images)"
        text = f"Under PGD-{masking.steps} {where} {name} keeps {pgd:.1f}%"
        if ref is not None:
            fpgd = reports[ref]["robust_accuracy"]["PGD"]
            text += f" against {fpgd:.1f}% for the float model of the same shape"
            if pgd > fpgd + masking.tolerance:
                text += ": binarisation looks like a defence"
        text += "."
        if flagged and pgd - best > masking.tolerance:
            zero = next(v for v in r["checks"] if v["name"] == "zero-gradients")["data"]
            text = (
                f"**Fake robustness found.** {text} The masking report flags it "
                f"({len(flagged)} of {len(r['checks'])} checks: {', '.join(flagged)}): "
                f"{zero['zero_gradient_pct']:.1f}% of its correctly classified images have an "
                f"exactly-zero input gradient. Attacks that masking cannot fool break it: "
                + ", ".join(
                    f"{k} {v:.1f}%"
                    for k, v in r["robust_accuracy"].items()
                    if k not in ("PGD", "worst case over all") and v < pgd - masking.tolerance
                )
                + (f", the AutoAttack-style ensemble {ens:.1f}%" if ens is not None else "")
                + f"; {best:.1f}% is an upper bound on its true robust accuracy, so "
                f"{pgd - best:.1f} points of PGD's number are fake."
            )
        elif flagged:
            text = (
                f"**Masking signs, no fake number.** {text} Checks flag its gradients "
                f"({', '.join(flagged)}), but the strongest attacks leave {best:.1f}%, within "
                f"{masking.tolerance:g} points of PGD."
            )
        else:
            text = (
                f"**No fake robustness found for {name}.** {text} Every masking check passes and "
                f"the strongest attacks leave {best:.1f}%: at this scale PGD tells the truth."
            )
        for other, e2 in eps.items():
            if other == label:
                continue
            p2 = _curve_at(r, "PGD", e2)
            en2 = ensembles[name][other]["robust_accuracy"]
            if p2 is None:
                continue
            text += (
                f" At ε = {_radius(e2)} ({other}) PGD leaves {p2:.1f}% and the ensemble "
                f"{en2:.1f}%"
                + (
                    ": there PGD's number holds up."
                    if round(p2 - en2, 6) <= masking.tolerance
                    else f", {p2 - en2:.1f} points lower."
                )
            )
        parts.append(text)
    if ref is not None:
        fr = reports[ref]
        parts.append(
            f"The float model ({ref}): "
            + (
                "every masking check passes."
                if not _flagged(fr)
                else f"flagged by {', '.join(_flagged(fr))}."
            )
        )
    return " ".join(parts)


def _markdown(
    verdict, table, models, trained, reports, diagnostics, n, timing, env, masking, ensemble
) -> str:
    """The text of ``report.md``. Long because it is the page's sections in the order they
    are read, each a few lines: splitting it would scatter one document."""
    names = list(models)
    checks = [v["name"] for v in reports[names[0]]["checks"]]
    lines = [
        "# qadv demo: fake robustness of binary networks on Fashion-MNIST",
        "",
        verdict,
        "",
        f"Robust accuracy (%) on the first {n} Fashion-MNIST test images (misclassified clean "
        "images count as failures; every attack is verified by re-running the model). PGD "
        f"variants: {masking.steps} steps of ε/4 from one random start. Square: "
        f"{masking.square_queries} queries. Ensemble: AutoAttack's standard protocol in "
        "cascade (APGD-CE, APGD-T, FAB-T, Square) with "
        + ", ".join(f"{k}={v}" for k, v in ensemble.items())
        + ".",
        "",
        table,
        "",
        "## Masking checks",
        "",
        "| check | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    by = {k: {v["name"]: v for v in r["checks"]} for k, r in reports.items()}
    for c in checks:
        lines.append(f"| {c} | " + " | ".join(by[k][c]["status"] for k in names) + " |")
    lines += [""]
    for k in names:
        lines += [
            f"- **{k}**: " + reports[k]["summary"] + f" Full report: `masking/{k}/masking.md`."
        ]
    lines += [
        "",
        "![Accuracy against epsilon](accuracy_vs_eps.png)",
        "",
        "![Accuracy against PGD iterations](accuracy_vs_iterations.png)",
        "",
        "![Hessian norm against beta](hessian_norm_vs_beta.png)",
        "",
        "## Signal propagation at β = 1",
        "",
        records.format_table(
            [
                "model",
                "zero grad %",
                "gap median",
                "gap p90",
                "gap max",
                "lead > 88 %",
                "‖ψ‖",
                "‖∇x ℓ‖",
                "mean JSV",
            ],
            [
                [
                    k,
                    d["zero_gradient_fraction"] * 100,
                    d["logit_gap_median"],
                    d["logit_gap_p90"],
                    d["logit_gap_max"],
                    d["logit_gap_frac_over_88"] * 100,
                    d["psi_norm_mean"],
                    d["input_grad_norm_mean"],
                    d["jsv_mean"],
                ]
                for k, d in diagnostics.items()
            ],
        ),
        "",
        "An example whose top logit leads by more than about 88 has ψ = 0 exactly in float32: "
        "its input gradient vanishes and PGD-L∞ cannot move it.",
        "",
        "## Models",
        "",
        records.format_table(
            [
                "model",
                "architecture",
                "policy",
                "epochs",
                "clean test acc (full test set)",
                "train time (s)",
            ],
            [
                [
                    k,
                    f"{c.arch} {tuple(c.arch_opts.get('widths', ()))}",
                    _policy_text(c),
                    c.epochs,
                    100 * trained[k]["clean_accuracy"],
                    trained[k]["wall_time_s"],
                ]
                for k, c in models.items()
            ],
        ),
        "",
        "## Provenance",
        "",
        f"- command: `qadv demo --n {n}`; wall time: {timing['wall_time_s']:.0f} s, of which "
        f"{timing['compile_time_s']:.0f} s compiling ({timing['programs_compiled']} XLA "
        f"programs) and {timing['run_time_s']:.0f} s running",
        f"- matmul precision: {env['matmul_precision']}; CPU: {env['cpu_model']} "
        f"({', '.join(env['cpu_features']) or 'no listed features'})",
        f"- git commit: {env['git_commit']}",
        f"- jax {env['jax_version']} on {env['backend']} ({', '.join(env['devices'])}), "
        f"{env['cpu_count']} CPU cores, {env['processor']}",
        "",
    ]
    return "\n".join(lines)
