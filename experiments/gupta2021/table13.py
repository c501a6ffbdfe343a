"""Gupta & Ajanthan, Table 13 (and Figures 4-5): signal propagation at β = 1, NJS and HNS.

    qadv study --config experiments/gupta2021/table13.py --size cpu --out results/repro/gupta2021_table13_cpu

Paper setting: ref, adversarially trained ref, BNN-WQ, BNN-WAQ ResNet-18 on CIFAR-10; 500
correctly classified images; mean/std JSV, ‖ψ‖₂, ‖∂ℓ/∂x‖₂, ‖sign ∂ℓ/∂x‖₂.
Targets (JSV mean, original → NJS): ref 8.09 → 0.951, BNN-WQ 35.3 → 0.995, BNN-WAQ
1.11 → 0.224; ‖ψ‖₂ BNN-WQ 6.20e-3 → 0.537. The phenomenon: NJS/HNS raise ‖ψ‖ and the
input-gradient norms and bring JSV near 1. ``signal/<cell>/signal.md`` per network.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

NETS = [
    ("ref_resnet18", "ref", "resnet18", {}),
    ("ref_resnet18_at", "ref", "resnet18", {"adv": "pgd"}),
    ("bnn_wq_resnet18", "bnn_wq", "resnet18", {}),
    ("bnn_waq_resnet18", "bnn_waq", "resnet18", {}),
]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    spec = pm.attack_spec(size, ("pgd",))
    opts = {"signal_examples": 500, "clever_examples": 0}
    parts = (Part("signal", StudyConfig(pm.models(NETS, size), spec), kind="signal", options=opts),)
    return finish(
        Experiment("Gupta & Ajanthan Table 13", parts, size, __doc__.split("\n\n")[2]), tiny
    )
