"""Gupta & Ajanthan, Table 14: PGD++ with β from Proposition 1 against ρ, on natural and
adversarially trained networks.

    qadv study --config experiments/gupta2021/table14.py --size cpu --out results/repro/gupta2021_table14_cpu

Paper setting: ref, BNN-WQ and PGD-trained ref*, BNN-WQ* ResNet-18 on CIFAR-10; PGD++
whose β bounds ∂ℓ(β)/∂ā_k by ρ (``prop1`` temperature), ρ from 1e-15 to 0.5.
Targets: BNN-WQ 9.61 at ρ = 1e-15, 0.00 from 1e-5; ref* 48.18, 47.66, 48.00, 53.09,
54.58, 57.57; BNN-WQ* 40.66 … 49.72. The phenomenon: an optimum ρ exists on AT networks
(too large a ρ costs 5-10 points). Plot: ``rho/accuracy_vs_rho.png``.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

RHOS = (1e-15, 1e-9, 1e-5, 1e-1, 2e-1, 5e-1)
NETS = [
    ("ref_resnet18", "ref", "resnet18", {}),
    ("bnn_wq_resnet18", "bnn_wq", "resnet18", {}),
    ("ref_resnet18_at", "ref", "resnet18", {"adv": "pgd"}),
    ("bnn_wq_md_resnet18_at", "bnn_wq", "resnet18", {"adv": "pgd", "wq_method": "md_tanh_s"}),
]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    names = tuple(f"pgd++prop1#rho{r:g}" for r in RHOS)
    spec = pm.attack_spec(
        size, names, extra_opts={n: {"rho": r} for n, r in zip(names, RHOS, strict=True)}
    )
    parts = (Part("rho", StudyConfig(pm.models(NETS, size), spec), sweep="rho"),)
    return finish(
        Experiment("Gupta & Ajanthan Table 14", parts, size, __doc__.split("\n\n")[2]), tiny
    )
