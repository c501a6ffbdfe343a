"""Gupta & Ajanthan, Figure 3: PGD-L∞ accuracy against the step size η on ResNet-18.

    qadv study --config experiments/gupta2021/figure3.py --size cpu --out results/repro/gupta2021_figure3_cpu

Paper setting: ref, BNN-WQ, BNN-WAQ ResNet-18 on CIFAR-10, ε = 8/255, PGD-20 with η from
a fraction of a pixel to ε. The claim: no step size takes BNN accuracy to zero (PGD++
does). Plot: ``step_size/accuracy_vs_step_size.png``.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1)


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    cells = pm.models(
        [(f"{p}_resnet18", p, "resnet18", {}) for p in ("ref", "bnn_wq", "bnn_waq")], size
    )
    e = pm.threat(size)["pgd"]["eps"]
    names = tuple(f"pgd#eta{k:g}" for k in FRACTIONS)
    extra = {n: {"step_size": e * k} for n, k in zip(names, FRACTIONS, strict=True)}
    spec = pm.attack_spec(size, (*names, "pgd++njs"), extra_opts=extra)
    parts = (Part("step_size", StudyConfig(cells, spec), sweep="step_size"),)
    return finish(
        Experiment("Gupta & Ajanthan Figure 3", parts, size, __doc__.split("\n\n")[2]), tiny
    )
