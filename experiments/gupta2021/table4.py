"""Gupta & Ajanthan, Table 4: adversarially trained ref and BNN-WQ (BC, GD-tanh, MD-tanh-S).

    qadv study --config experiments/gupta2021/table4.py --size cpu --out results/repro/gupta2021_table4_cpu

Paper setting: ResNet-18 on CIFAR-10, PGD adversarial training (T 7, η 2, ε 8); attacks
FGSM, FGSM with β = 0.1, FGSM++ (NJS, HNS), PGD, PGD with β = 0.1, DeepFool, PGD++
(NJS, HNS) at Table 6's parameters. BBA (Brendel & Bethge) is not in qadv: no column.
Targets: ref PGD 48.73, β=0.1 61.27, DeepFool 51.01, PGD++ 47.17 / 48.54; MD-tanh-S PGD
41.34 → PGD++ 40.76 / 40.67. The phenomenon: PGD++ gains a point or two on adversarially
trained networks; a heuristic β = 0.1 is worse than plain PGD.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

ATTACKS = (
    "fgsm", "fgsm++fixed", "fgsm++njs", "fgsm++hns",
    "pgd", "pgd++fixed", "deepfool", "pgd++njs", "pgd++hns",
)  # fmt: skip
AT_NETS = [
    ("ref_resnet18_at", "ref", "resnet18", {"adv": "pgd"}),
    ("bnn_wq_bc_resnet18_at", "bnn_wq", "resnet18", {"adv": "pgd", "wq_method": "bc"}),
    ("bnn_wq_gd_resnet18_at", "bnn_wq", "resnet18", {"adv": "pgd", "wq_method": "gd_tanh"}),
    ("bnn_wq_md_resnet18_at", "bnn_wq", "resnet18", {"adv": "pgd", "wq_method": "md_tanh_s"}),
]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    fixed = {"beta": 0.1}
    spec = pm.attack_spec(size, ATTACKS, extra_opts={"fgsm++fixed": fixed, "pgd++fixed": fixed})
    parts = (Part("adv_trained", StudyConfig(pm.models(AT_NETS, size), spec)),)
    return finish(
        Experiment("Gupta & Ajanthan Table 4", parts, size, __doc__.split("\n\n")[2]), tiny
    )
