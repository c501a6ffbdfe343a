"""Gupta & Ajanthan, Table 10: PGD++ against DeepFool on BNN-WAQ.

    qadv study --config experiments/gupta2021/table10.py --size cpu --out results/repro/gupta2021_table10_cpu

Paper setting: BNN-WAQ ResNet-18 and VGG-16 on CIFAR-10, ε = 8/255 (Table 6); PGD,
DeepFool, BBA, PGD++ (NJS, HNS). BBA is not in qadv: no column. Targets: ResNet-18 PGD
8.57, DeepFool 18.92, BBA 0.81, PGD++ 0.03 / 0.04; VGG-16 78.01, 12.12, 0.10, 0.01 / 0.02.
Networks shared with Tables 1 and 3.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    nets = [(f"bnn_waq_{a}", "bnn_waq", a, {}) for a in ("resnet18", "vgg16")]
    spec = pm.attack_spec(size, ("pgd", "deepfool", "pgd++njs", "pgd++hns"))
    parts = (Part("waq", StudyConfig(pm.models(nets, size), spec)),)
    return finish(
        Experiment("Gupta & Ajanthan Table 10", parts, size, __doc__.split("\n\n")[2]), tiny
    )
