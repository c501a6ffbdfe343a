"""Gupta & Ajanthan, Table 1: clean and PGD-L∞ accuracy with 1 and 20 random restarts.

    qadv study --config experiments/gupta2021/table1.py --size cpu --out results/repro/gupta2021_table1_cpu

Paper setting: ref, BNN-WQ (MD-tanh-S) and BNN-WAQ ResNet-18 and VGG-16 on CIFAR-10;
PGD-L∞ of Table 6 (ε 8, η 2, T 20) with 1 and 20 random restarts.
Targets: ResNet-18 ref 94.46 / 0.00 / 0.00, BNN-WQ 93.18 / 26.98 / 17.91, BNN-WAQ
87.67 / 8.57 / 1.94; VGG-16 BNN-WQ 91.53 / 47.32 / 38.49, BNN-WAQ 89.69 / 78.01 / 59.26.
The phenomenon: BNNs keep far more accuracy under PGD than float networks, even with 20
restarts. Sizes: see qadv.apps.paper_models (cpu: 3×1024 MLP and small CNN stand-ins).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

NETS = [(f"{p}_{a}", p, a, {}) for a in ("resnet18", "vgg16") for p in ("ref", "bnn_wq", "bnn_waq")]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    cells = pm.models(NETS, size)
    spec = pm.attack_spec(size, ("pgd", "pgd#r20"), extra_opts={"pgd#r20": {"restarts": 20}})
    parts = (Part("restarts", StudyConfig(cells, spec)),)
    return finish(
        Experiment("Gupta & Ajanthan Table 1", parts, size, __doc__.split("\n\n")[2]), tiny
    )
