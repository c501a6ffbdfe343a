r"""Gupta & Ajanthan, Table 2: FGSM/PGD against FGSM++/PGD++ (NJS, HNS) on BNN-WQ.

    qadv study --config experiments/gupta2021/table2.py --size cpu \
        --only bnn_wq_resnet18,ref_resnet18 --out results/repro/gupta2021_table2_cpu
    qadv study --config experiments/gupta2021/table2.py --size gpu --out results/repro/gupta2021_table2_gpu
    qadv study --config experiments/gupta2021/table2.py --size paper --out runs/gupta2021_table2

Paper setting: BNN-WQ (weights ±1, MD-tanh-S) ResNet-18, VGG-16, ResNet-50, DenseNet-121,
MobileNet-V2 on CIFAR-10 and CIFAR-100; attacks of Table 6 (CIFAR-10: FGSM ε = η = 8,
PGD-L∞ ε 8 η 2 T 20, PGD-L2 ε 120 η 15 T 20; CIFAR-100: 4/4, 4/1/10, 60/15/10, pixels
of 255), one random start, NJS with ρ = 0.01, HNS by grid search over β.
Targets (CIFAR-10 ResNet-18 row): FGSM 40.49 → FGSM++ 3.46 (NJS) / 2.51 (HNS);
PGD-L∞ 26.98 → PGD++ 0.00 / 0.00; PGD-L2 55.68 → 0.05 / 0.05. VGG-16: PGD-L∞ 47.32 → 0.00.
The phenomenon: PGD leaves BNN-WQ tens of points of accuracy; PGD++ takes it to ≈ 0.

Sizes (qadv.apps.paper_models): ``paper`` all five architectures on CIFAR-10 and CIFAR-100;
``gpu`` ResNet-18 and VGG-16 (with float ``ref`` twins for contrast) on Fashion-MNIST
32×32 at ε = 0.1; ``cpu`` their stand-ins (3×1024 MLP and the small CNN; ``--only``
``bnn_wq_resnet18,ref_resnet18`` for the MLP pair alone: 27.5 min on 2 shared cores, the
run in results/repro/gupta2021_table2_cpu; the full cpu config, with the CNN pair, was
not timed). ``--set seed=1`` trains every network with another seed (run-to-run noise).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

ATTACKS = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns")
L2_ATTACKS = ("pgd", "pgd++njs", "pgd++hns")


def _nets(size: str, dataset: str, seed: int = 0):
    archs = ("resnet18", "vgg16")
    if size == "paper":
        archs += ("resnet50", "densenet121", "mobilenetv2")
    sfx = "" if dataset == "cifar10" else "_c100"
    rows = [(f"bnn_wq_{a}{sfx}", "bnn_wq", a, {}) for a in archs]
    if size != "paper":
        rows += [(f"ref_{a}", "ref", a, {}) for a in archs]
    return pm.models(rows, size, paper_dataset=dataset, seed=seed)


def config(size: str = "cpu", tiny: bool = False, seed: int = 0) -> Experiment:
    pm.check_size(size)
    seed = int(seed)
    parts = []
    for ds in ("cifar10", "cifar100") if size == "paper" else ("cifar10",):
        cells = _nets(size, ds, seed)
        tag = "" if size != "paper" else f"_{ds}"
        parts.append(
            Part(f"linf{tag}", StudyConfig(cells, pm.attack_spec(size, ATTACKS, paper_dataset=ds)))
        )
        parts.append(
            Part(
                f"l2{tag}",
                StudyConfig(cells, pm.attack_spec(size, L2_ATTACKS, norm="l2", paper_dataset=ds)),
            )
        )
    exp = Experiment("Gupta & Ajanthan Table 2", tuple(parts), size, __doc__.split("\n\n")[2])
    return finish(exp, tiny)
