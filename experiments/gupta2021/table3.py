"""Gupta & Ajanthan, Table 3: FGSM/PGD against FGSM++/PGD++ on float (ref) and BNN-WAQ.

    qadv study --config experiments/gupta2021/table3.py --size cpu --out results/repro/gupta2021_table3_cpu

Paper setting: ref and BNN-WAQ ResNet-18, VGG-16, ResNet-50, DenseNet-121 on CIFAR-10;
Table 6 attacks (FGSM 8/8, PGD-L∞ 8/2/20, PGD-L2 120/15/20), NJS ρ = 0.01, HNS.
Targets: ref ResNet-18 FGSM 7.62 → 5.55/5.35, PGD-L2 1.12 → 0.09/0.05; BNN-WAQ ResNet-18
PGD-L∞ 8.57 → 0.03/0.04, VGG-16 78.01 → 0.01/0.02, PGD-L2 85.62 → 0.49/0.62.
The phenomena: PGD++ also helps on float networks; near 100 % success on BNN-WAQ.
The ref networks are the ones of Table 2 (one store entry).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

LINF = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns")
L2 = ("pgd", "pgd++njs", "pgd++hns")


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    archs = ("resnet18", "vgg16", "resnet50", "densenet121")
    cells = pm.models([(f"{p}_{a}", p, a, {}) for p in ("ref", "bnn_waq") for a in archs], size)
    parts = (
        Part("linf", StudyConfig(cells, pm.attack_spec(size, LINF))),
        Part("l2", StudyConfig(cells, pm.attack_spec(size, L2, norm="l2"))),
    )
    return finish(
        Experiment("Gupta & Ajanthan Table 3", parts, size, __doc__.split("\n\n")[2]), tiny
    )
