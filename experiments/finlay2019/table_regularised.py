"""Finlay & Oberman: input-gradient regularisation (IGR, finite differences) against
PGD adversarial training: clean error and error at ε = 2/255 and 8/255.

    qadv study --config experiments/finlay2019/table_regularised.py --size cpu --out results/repro/finlay2019_table_cpu

Paper setting (CIFAR-10 table): undefended; Madry 7-step AT; squared-norm IGR with λ = 0.1
and λ = 1 (finite differences); error under the best attack per image (Foolbox), mean
adversarial distance, training time. Targets (% error clean / 2/255 / 8/255, hours):
undefended 4.36 / 70.82 / 98.94, 2.06; AT 16.33 / 22.86 / 46.02, 12.10; IGR λ=0.1 6.45 /
24.92 / 70.41, 5.22; IGR λ=1 9.02 / 18.47 / 58.69, 5.15. The phenomenon: IGR buys much of
AT's robustness at small ε for less training time, less at 8/255. The architecture is
the ResNet-18 stand-in of qadv.apps.paper_models (the paper uses a ResNeXt-34); the radii are
scaled to Fashion-MNIST like Table 6 (2/255 → 0.025, 8/255 → 0.1 at ``gpu``/``cpu``).
Per-image best attack = the table's ``worst`` column (PGD, APGD-CE, Square, ``standard``).
Training time is each cell's ``train s``. Mean distance: the ``bounds`` part.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

NETS = [
    ("ref_resnet18", "ref", "resnet18", {}),
    ("ref_resnet18_at", "ref", "resnet18", {"adv": "pgd"}),
    ("ref_resnet18_igr0.1", "ref", "resnet18", {"igr_lambda": 0.1}),
    ("ref_resnet18_igr1", "ref", "resnet18", {"igr_lambda": 1.0}),
]


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    cells = pm.models(NETS, size)
    e = pm.threat(size)["pgd"]["eps"]
    extra = {"square": {"queries": 1000 if size == "cpu" else 5000}}
    spec = pm.attack_spec(
        size, ("pgd", "apgd-ce", "square"), eps=(e / 4, e), ensemble="standard", extra_opts=extra
    )
    opts = {"clever_examples": 0, "signal_examples": 100, "bound_examples": 100}
    parts = (
        Part("attacks", StudyConfig(cells, spec), sweep="eps"),
        Part("bounds", StudyConfig(cells, spec), kind="signal", options=opts),
    )
    return finish(
        Experiment("Finlay & Oberman: IGR against AT", parts, size, __doc__.split("\n\n")[2]), tiny
    )
