"""Finlay & Oberman: the L-bound and C-bound on the minimum adversarial distance, for
undefended and gradient-regularised networks (the poster's bound figure).

    qadv study --config experiments/finlay2019/figure_bounds.py --size cpu --out results/repro/finlay2019_bounds_cpu

Paper setting: ImageNet-1k, smooth-ReLU networks, undefended and IGR (squared ℓ2, λ = 0.1);
histogram of the theoretical lower bound on the adversarial distance. The claim: IGR
raises the lower bounds (smaller input gradients and curvature). Runs the signal report's
bounds section (L- and C-bound per image beside the min-norm attack's distance;
``bounds_hist.png``) on an undefended and two IGR networks.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

NETS = [
    ("ref_resnet18", "ref", "resnet18", {}),
    ("ref_resnet18_igr0.1", "ref", "resnet18", {"igr_lambda": 0.1}),
    ("ref_resnet18_igr1", "ref", "resnet18", {"igr_lambda": 1.0}),
]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    spec = pm.attack_spec(size, ("pgd",), norm="l2")
    opts = {"clever_examples": 0, "signal_examples": 100, "bound_examples": 100}
    parts = (Part("bounds", StudyConfig(pm.models(NETS, size), spec), kind="signal", options=opts),)
    return finish(
        Experiment("Finlay & Oberman: L/C bounds", parts, size, __doc__.split("\n\n")[2]), tiny
    )
