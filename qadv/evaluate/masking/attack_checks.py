"""Masking checks that pit attacks against each other on the same examples.

``temperature`` (PGD++ against PGD), ``iterations`` (accuracy against PGD iterations,
and FGSM against many steps), ``epsilon`` (accuracy against ε), ``step-size`` (the step
size sweep of paper Fig. 3), ``transfer`` (PGD on a surrogate) and ``black-box``
(Square). "Beats" is always :func:`~qadv.evaluate.masking.outcome.beats`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from qadv.attacks import get_norm
from qadv.evaluate.diagnostics import accuracy_curve
from qadv.evaluate.masking.outcome import (
    PASS,
    SKIPPED,
    SUSPECTED,
    CheckOutcome,
    beats,
    check,
    eps_text,
    pct,
)
from qadv.evaluate.masking.probe import Probe

__all__: list[str] = []


@check("temperature", "PGD++: one temperature on the logits")
def _temperature(probe: Probe) -> CheckOutcome:
    pgd, pgd_r = probe.accuracy(*probe.white_box()), probe.robust(*probe.white_box())
    accs = {t: probe.accuracy(*probe.pgd(temperature=t)) for t in probe.config.temperatures}
    data = {"pgd": pgd, "pgd++": accs}
    if not accs:
        return CheckOutcome("temperature", SKIPPED, "no temperatures configured", data)
    best = min(accs, key=accs.get)
    data["test"] = beats(probe.robust(*probe.pgd(temperature=best)), pgd_r, probe.config.tolerance)
    if data["test"]["beats"]:
        return CheckOutcome(
            "temperature",
            SUSPECTED,
            f"PGD++ ({best.upper()}) leaves {pct(accs[best])} where PGD leaves {pct(pgd)}: "
            "rescaling the logits changes no prediction, so the difference is saturated "
            "softmax, not robustness",
            data,
        )
    return CheckOutcome(
        "temperature",
        PASS,
        f"PGD++ ({best.upper()}) {pct(accs[best])} against PGD {pct(pgd)}: temperature "
        "scaling does not help",
        data,
    )


@check("iterations", "Accuracy against PGD iterations")
def _iterations(probe: Probe) -> CheckOutcome:
    c = probe.config
    _, wb = probe.white_box()
    long_key, cfg = probe.pgd(steps=c.max_steps)

    def compute():
        curve = accuracy_curve(
            probe.logits_fn,
            probe.images,
            probe.labels,
            cfg,
            batch_size=min(c.batch_size, probe.n),
            seed=c.seed,
            context=probe.context,
        )
        return [float(v) for v in curve]

    curve = probe.fact(f"iterations_T{c.max_steps}", compute)
    # the curve's end point, scored (same keys, so the same run): its per-example flags
    # feed the paired tests below and the report's worst case
    long_acc, long_r = probe.accuracy(long_key, cfg), probe.robust(long_key, cfg)
    fgsm_key, fgsm_cfg = probe.fgsm()
    fgsm, fgsm_r = probe.accuracy(fgsm_key, fgsm_cfg), probe.robust(fgsm_key, fgsm_cfg)
    strongest, strongest_r = probe.strongest()
    final, half = curve[-1], curve[len(curve) // 2]
    data = {
        "curve": curve,
        "pgd_max_steps": long_acc,
        "fgsm": fgsm,
        "strongest": strongest,
        "step_size": wb.step_size,
        "fgsm_test": beats(fgsm_r, long_r, c.tolerance),
        "test": beats(strongest_r, long_r, c.tolerance),
    }
    if data["fgsm_test"]["beats"]:
        t = data["fgsm_test"]
        return CheckOutcome(
            "iterations",
            SUSPECTED,
            f"one FGSM step leaves {pct(fgsm)}, below PGD's {pct(long_acc)} after "
            f"{c.max_steps} steps on the same examples ({t['broken_only_by_other']} broken "
            f"only by FGSM, {t['broken_only_by_pgd']} only by PGD; sign test p = "
            f"{t['p_value']:.2g}): an iterative attack should be at least as strong",
            data,
        )
    if data["test"]["beats"] and half - final < 1.0:
        return CheckOutcome(
            "iterations",
            SUSPECTED,
            f"PGD plateaus at {pct(final)} (step {len(curve) // 2}: {pct(half)}; step "
            f"{c.max_steps}: {pct(final)}) while the attacks of this report together leave "
            f"{pct(strongest)}: more iterations do not help",
            data,
        )
    return CheckOutcome(
        "iterations",
        PASS,
        f"PGD falls to {pct(final)} after {c.max_steps} steps (other attacks together: "
        f"{pct(strongest)})",
        data,
    )


def _eps_curves(probe: Probe) -> dict[str, Any]:
    c = probe.config
    diameter = get_norm(c.norm).diameter(int(np.prod(probe.images.shape[1:])))
    cap = diameter if c.eps_cap is None else min(c.eps_cap, diameter)  # no ball past the box
    variants = {"PGD": {}}
    variants.update({f"PGD++ ({t.upper()})": {"temperature": t} for t in c.temperatures})
    if c.margin_loss:
        variants["PGD (CW margin)"] = {"loss": "cw"}
    curves = {name: [] for name in variants}
    radii: list[float] = []
    todo = sorted({min(c.eps * f, cap) for f in c.eps_factors})
    while todo:
        eps = todo.pop(0)
        radii.append(eps)
        for name, opts in variants.items():
            curves[name].append(probe.accuracy(*probe.pgd(eps=eps, step_size=None, **opts)))
        if all(v[-1] == 0 for v in curves.values()):
            break
        if not todo and curves["PGD"][-1] > 0 and eps < cap:
            todo.append(min(2 * eps, cap))
    return {"eps": radii, "curves": curves, "cap": cap}


@check("epsilon", "Accuracy against ε")
def _epsilon(probe: Probe) -> CheckOutcome:
    d = _eps_curves(probe)
    radii, curves, cap = d["eps"], d["curves"], d["cap"]
    pgd = curves["PGD"]
    zero_at = {
        name: next((e for e, a in zip(radii, v, strict=True) if a == 0), None)
        for name, v in curves.items()
    }
    others = {k: v for k, v in zero_at.items() if k != "PGD" and v is not None}
    last = radii[-1]
    data = {**d, "zero_at": zero_at}
    if pgd[-1] > 0 and others:
        name = min(others, key=others.get)
        return CheckOutcome(
            "epsilon",
            SUSPECTED,
            f"PGD still leaves {pct(pgd[-1])} at ε = {eps_text(last)} while {name} reaches 0% "
            f"at ε = {eps_text(others[name])}: accuracy plateaus instead of falling to 0",
            data,
        )
    if pgd[-1] > 0 and last >= cap:
        return CheckOutcome(
            "epsilon",
            SUSPECTED,
            f"PGD leaves {pct(pgd[-1])} at ε = {eps_text(last)}, the largest meaningful radius: "
            "an unbounded attack must reach 0%",
            data,
        )
    if pgd[-1] > 0:
        return CheckOutcome(
            "epsilon",
            PASS,
            f"PGD falls to {pct(pgd[-1])} at ε = {eps_text(last)} (cap not reached)",
            data,
        )
    return CheckOutcome("epsilon", PASS, f"PGD falls to 0% at ε = {eps_text(zero_at['PGD'])}", data)


@check("step-size", "PGD step-size sweep (paper Fig. 3)")
def _step_size(probe: Probe) -> CheckOutcome:
    c = probe.config
    etas = [c.eps * f for f in c.step_factors]
    accs = [probe.accuracy(*probe.pgd(step_size=eta)) for eta in etas]
    plus = {t: probe.accuracy(*probe.pgd(temperature=t)) for t in c.temperatures}
    k = int(np.argmin(accs))
    data = {"step_sizes": etas, "pgd": accs, "pgd++": plus}
    best = min(plus, key=plus.get) if plus else None
    if best is not None:
        data["test"] = beats(
            probe.robust(*probe.pgd(temperature=best)),
            probe.robust(*probe.pgd(step_size=etas[k])),
            c.tolerance,
        )
    if best is not None and data["test"]["beats"]:
        return CheckOutcome(
            "step-size",
            SUSPECTED,
            f"no step size helps PGD: its best (η = {etas[k]:.3g}) leaves {pct(accs[k])}, while "
            f"PGD++ ({best.upper()}) at the default step leaves {pct(plus[best])}",
            data,
        )
    return CheckOutcome(
        "step-size",
        PASS,
        f"PGD's best step size (η = {etas[k]:.3g}) gives {pct(accs[k])}"
        + (f", within {c.tolerance:g} points of PGD++" if plus else ""),
        data,
    )


def _versus_pgd(
    probe: Probe, name: str, other: tuple[str, Any], what: str, why: str
) -> CheckOutcome:
    """Does ``other`` (key, config) beat white-box PGD on the same examples (:func:`beats`)?"""
    pgd = probe.accuracy(*probe.white_box())
    acc = probe.accuracy(*other)
    test = beats(probe.robust(*other), probe.robust(*probe.white_box()), probe.config.tolerance)
    data = {"pgd": pgd, "attack": acc, "test": test}
    if test["beats"]:
        reason = (
            f"{what} leaves {pct(acc)}, below white-box PGD's {pct(pgd)} "
            f"({test['broken_only_by_other']} examples broken only by it): {why}"
        )
        return CheckOutcome(name, SUSPECTED, reason, data)
    return CheckOutcome(name, PASS, f"{what} leaves {pct(acc)}, white-box PGD {pct(pgd)}", data)


@check("transfer", "White-box against transfer from a surrogate")
def _transfer(probe: Probe) -> CheckOutcome:
    if probe.context.surrogate is None:
        return CheckOutcome("transfer", SKIPPED, "no surrogate model given")
    return _versus_pgd(
        probe,
        "transfer",
        probe.transfer(),
        "PGD run on the surrogate",
        "the model's own gradients mislead",
    )


@check("black-box", "White-box against Square (gradient-free)")
def _black_box(probe: Probe) -> CheckOutcome:
    key, cfg = probe.square()
    return _versus_pgd(
        probe,
        "black-box",
        (key, cfg),
        f"Square ({cfg.queries} queries, no gradients)",
        "an attack without gradients does better than one with them",
    )
