"""Gupta & Ajanthan, Table 11 (with Table 13 and Figures 4-5): CLEVER scores and signal
propagation of BNNs under NJS and HNS temperature scaling.

    qadv study --config experiments/gupta2021/table11.py --size cpu --out results/repro/gupta2021_table11_cpu

Paper setting: BNN-WQ and BNN-WAQ ResNet-18 on CIFAR-10; CLEVER (ART implementation), L1
norm, 50 batches of 10, radius 5; original network, heuristic β = 0.01, NJS, HNS.
Targets: BNN-WQ 0.8585 / 0.8845 / 0.4139 / 0.3450; BNN-WAQ 0.7239 / 3.1578 / 0.3120 /
0.2774. The phenomenon: NJS/HNS lower CLEVER's (over-optimistic) bound, β = 0.01 raises it.
Runs ``qadv signal``'s report per network (``signal/<cell>/signal.md``): CLEVER, the
signal table (JSV, ‖ψ‖, ‖∂ℓ/∂x‖, ‖sign ∂ℓ/∂x‖ at β = 1, NJS, HNS: Table 13), the ρ
ablation and the L/C lower bounds.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    nets = [(f"{p}_resnet18", p, "resnet18", {}) for p in ("bnn_wq", "bnn_waq")]
    spec = pm.attack_spec(size, ("pgd",))
    opts = {"clever_examples": 50 if size == "cpu" else 500}
    parts = (Part("signal", StudyConfig(pm.models(nets, size), spec), kind="signal", options=opts),)
    return finish(
        Experiment("Gupta & Ajanthan Table 11", parts, size, __doc__.split("\n\n")[2]), tiny
    )
