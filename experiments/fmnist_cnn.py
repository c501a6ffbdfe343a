"""The small CNN on real Fashion-MNIST as ``ref``, ``bnn_wq`` (BinaryConnect) and
``bnn_waq``, attacked with all nine attacks of the core paper's Table 2: FGSM, PGD-L∞
and PGD-L2, each plain and with the NJS and HNS temperatures.

    qadv study --config experiments/fmnist_cnn.py --out results/fmnist_cnn
    qadv study --config experiments/fmnist_cnn.py --set n=10000 --out runs/fmnist_cnn_full

Setting: the small CNN, 8 epochs of Adam (lr 1e-3, cosine, batch 128) on the full
training set, seed 0 (accuracy targets 90/85/80 %, each under 15 min on 2 CPU cores).
Attacks on the first ``n`` = 1,000 test images with Table 6's CIFAR-10 parameters in
pixels of 255: FGSM ε = η = 8, PGD-L∞ ε 8, η 2, 20 steps, PGD-L2 ε 120, η 15, 20 steps
(one random start); clean accuracy on the full test set. Parts ``linf`` and ``l2``.
A killed run resumes: rerun the command. ``--set tiny=1`` is a smoke run.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import Cell, StudyConfig
from qadv.training import TrainConfig

LINF = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns")
L2 = ("pgd", "pgd++njs", "pgd++hns")


def _cnn(policy: str, epochs: int) -> TrainConfig:
    extra = {"wq_method": "bc"} if policy == "bnn_wq" else {}
    return TrainConfig(dataset="fashion_mnist", arch="cnn", policy=policy, epochs=epochs, **extra)


def config(n: int = 1000, epochs: int = 8, tiny: bool = False) -> Experiment:
    cells = tuple(Cell(p, _cnn(p, int(epochs)), group=p) for p in ("ref", "bnn_wq", "bnn_waq"))
    parts = []
    for norm, attacks in (("linf", LINF), ("l2", L2)):
        # Table 6 at paper size: the CIFAR-10 radii and steps in pixels of 255
        spec = pm.attack_spec("paper", attacks, norm=norm, batch_size=250)
        spec = spec.__class__(**{**spec.to_dict(), "n": int(n)})
        parts.append(Part(norm, StudyConfig(cells, spec, name=f"Fashion-MNIST CNNs, {norm}")))
    doc = __doc__.split("\n\n")[2]
    exp = Experiment("Table 2 attacks on the Fashion-MNIST CNNs", tuple(parts), "cpu", doc)
    return finish(exp, tiny)
