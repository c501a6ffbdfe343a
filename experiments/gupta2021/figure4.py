"""Gupta & Ajanthan, Figures 4 and 5: ψ(β), softmax-Jacobian JSV, Hessian norm and
input-gradient norms against β on a BNN-WQ ResNet-18.

    qadv study --config experiments/gupta2021/figure4.py --size cpu --out results/repro/gupta2021_figure4_cpu

Paper setting: BNN-WQ ResNet-18 on CIFAR-10, one correctly classified image, β swept
over the range of Proposition 1. The claim: the Hessian norm and ‖∂ℓ(β)/∂x‖ are concave
in β with an interior maximum where ψ(β) is non-zero (HNS picks it). Runs the signal
report with its β sweep (``signal/<cell>/``: ψ(β), the softmax-Jacobian JSV, the Hessian
norm, ‖∂ℓ(β)/∂x‖₂ and ‖sign ∂ℓ(β)/∂x‖₂ over 31 temperatures from 1e-4 to 100, medians
over 20 correctly classified images: ``beta_sweep_signal.png`` is Figure 4,
``beta_sweep_gradients.png`` Figure 5), beside β of NJS/HNS per image (Table 13).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    cells = pm.models([("bnn_wq_resnet18", "bnn_wq", "resnet18", {})], size)
    opts = {
        "signal_examples": 100,
        "clever_examples": 0,
        "bound_examples": 0,
        "beta_sweep_examples": 20,
    }
    parts = (
        Part(
            "signal",
            StudyConfig(cells, pm.attack_spec(size, ("pgd",))),
            kind="signal",
            options=opts,
        ),
    )
    return finish(
        Experiment("Gupta & Ajanthan Figures 4-5", parts, size, __doc__.split("\n\n")[2]), tiny
    )
