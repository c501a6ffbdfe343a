"""Gupta & Ajanthan, Table 5: against DLR-loss attacks, APGD-DLR and Square (ResNet-18).

    qadv study --config experiments/gupta2021/table5.py --size cpu --out results/repro/gupta2021_table5_cpu

Paper setting: ref, BNN-WQ, BNN-WAQ and adversarially trained ref* and BNN-WQ* ResNet-18
on CIFAR-10 at ε = 8/255 (Table 6); FGSM and PGD with CE and DLR loss, APGD-DLR, Square,
FGSM++/PGD++ (NJS, HNS). Targets: BNN-WQ PGD 26.98, PGD-DLR 0.00, APGD-DLR 0.00, Square
0.41, PGD++ 0.00; BNN-WAQ PGD 8.57, APGD-DLR 6.32, Square 21.45, PGD++ 0.03 / 0.04;
ref* PGD 48.73, APGD-DLR 49.00, PGD++ 47.17. The phenomenon: PGD++ reaches ≈ 0 on BNNs
where Square does not; on AT networks the DLR attacks are weaker than PGD++.
Networks shared with Tables 1-4 (one store entry each).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

ATTACKS = (
    "fgsm", "fgsm#dlr", "fgsm++njs", "fgsm++hns", "pgd", "pgd#dlr",
    "apgd-dlr", "square", "pgd++njs", "pgd++hns",
)  # fmt: skip
NETS = [
    ("ref_resnet18", "ref", "resnet18", {}),
    ("bnn_wq_resnet18", "bnn_wq", "resnet18", {}),
    ("bnn_waq_resnet18", "bnn_waq", "resnet18", {}),
    ("ref_resnet18_at", "ref", "resnet18", {"adv": "pgd"}),
    ("bnn_wq_md_resnet18_at", "bnn_wq", "resnet18", {"adv": "pgd", "wq_method": "md_tanh_s"}),
]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    dlr = {"loss": "dlr"}
    extra = {
        "fgsm#dlr": dlr,
        "pgd#dlr": dlr,
        "square": {"queries": 1000 if size == "cpu" else 5000},
    }
    spec = pm.attack_spec(size, ATTACKS, extra_opts=extra)
    parts = (Part("dlr_square", StudyConfig(pm.models(NETS, size), spec)),)
    return finish(
        Experiment("Gupta & Ajanthan Table 5", parts, size, __doc__.split("\n\n")[2]), tiny
    )
