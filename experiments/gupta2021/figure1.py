"""Gupta & Ajanthan, Figure 1: gradient-masking checks on ResNet-18 (accuracy against PGD
iterations, against ε, and white-box against black-box).

    qadv study --config experiments/gupta2021/figure1.py --size cpu --out results/repro/gupta2021_figure1_cpu

Paper setting: ref, BNN-WQ, BNN-WAQ ResNet-18 on CIFAR-10; PGD-L∞ (η 2/255) with more
iterations, larger ε, and a black-box attack (Square). The figure's claims: (a) more
iterations do not lower BNN accuracy, (b) a larger ε does, (c) black-box beats PGD.
Plots: ``iterations/accuracy_vs_steps.png``, ``radius/accuracy_vs_eps.png``; the
``blackbox`` table sets Square beside PGD.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

STEPS = (1, 5, 10, 20, 50, 100)


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    cells = pm.models(
        [(f"{p}_resnet18", p, "resnet18", {}) for p in ("ref", "bnn_wq", "bnn_waq")], size
    )
    names = tuple(f"pgd#it{t}" for t in STEPS)
    iters = pm.attack_spec(
        size, names, extra_opts={n: {"steps": t} for n, t in zip(names, STEPS, strict=True)}
    )
    e = pm.threat(size)["pgd"]["eps"]
    radius = pm.attack_spec(size, ("pgd",), eps=tuple(e * k for k in (0.25, 0.5, 1, 2, 4)))
    extra = {"square": {"queries": 1000 if size == "cpu" else 5000}}
    blackbox = pm.attack_spec(size, ("pgd", "square"), extra_opts=extra)
    parts = (
        Part("iterations", StudyConfig(cells, iters), sweep="steps"),
        Part("radius", StudyConfig(cells, radius), sweep="eps"),
        Part("blackbox", StudyConfig(cells, blackbox)),
    )
    return finish(
        Experiment("Gupta & Ajanthan Figure 1", parts, size, __doc__.split("\n\n")[2]), tiny
    )
