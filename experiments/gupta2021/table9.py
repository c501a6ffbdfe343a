"""Gupta & Ajanthan, Table 9: FGSM/PGD against FGSM++/PGD++ on float networks, CIFAR-100.

    qadv study --config experiments/gupta2021/table9.py --size cpu --out results/repro/gupta2021_table9_cpu

Paper setting: ref ResNet-18, VGG-16, ResNet-50, DenseNet-121 on CIFAR-100; Table 6's
CIFAR-100 attacks (FGSM 4/4, PGD-L∞ 4/1/10, PGD-L2 60/15/10). Targets: ResNet-18 FGSM
9.06 → 9.23 / 2.70, PGD-L∞ 0.14 → 0.14 / 0.00, PGD-L2 4.86 → 0.17 / 0.15; VGG-16 PGD-L∞
1.53 → 0.95 / 0.25. The phenomenon: small gains of PGD++ on float networks. At ``gpu``
and ``cpu`` size the data is Fashion-MNIST (10 classes) with the CIFAR-100 schedule of
attacks (10 PGD steps) scaled to ε = 0.1.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

LINF = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns")
L2 = ("pgd", "pgd++njs", "pgd++hns")


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    archs = ("resnet18", "vgg16", "resnet50", "densenet121")
    nets = [(f"ref_{a}_c100", "ref", a, {}) for a in archs]
    cells = pm.models(nets, size, paper_dataset="cifar100")
    parts = (
        Part("linf", StudyConfig(cells, pm.attack_spec(size, LINF, paper_dataset="cifar100"))),
        Part(
            "l2", StudyConfig(cells, pm.attack_spec(size, L2, norm="l2", paper_dataset="cifar100"))
        ),
    )
    return finish(
        Experiment("Gupta & Ajanthan Table 9", parts, size, __doc__.split("\n\n")[2]), tiny
    )
