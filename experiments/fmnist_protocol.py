"""Every attack of the protocol on the Fashion-MNIST CNNs (the core paper's Table 5
pattern): FGSM, PGD, PGD++ (NJS, HNS), transfer from the float model, DeepFool, APGD-CE,
APGD-DLR, Square, APGD-T, FAB-T and AutoAttack's ``standard`` ensemble, on the float
(``ref``), binary-weight (``bnn_wq``, BinaryConnect) and binary weight+activation
(``bnn_waq``) small CNN.

    qadv study --config experiments/fmnist_protocol.py --out results/fmnist_protocol
    qadv study --config experiments/fmnist_protocol.py --set n=1000 --set eps=25/255 \
        --out runs/protocol_eps25

Setting: the small CNN, 4 epochs of Adam (lr 1e-3, cosine, batch 128) on the full
Fashion-MNIST training set, seed 0; the first ``n`` = 200 test images at L∞ ε = 8/255;
every attack at its registry defaults (PGD: 20 steps of ε/4, one random start); the
transfer attack runs PGD on the ``ref`` network. Clean accuracy is on the full test set.
About an hour on 2 CPU cores. A killed run resumes attack by attack: rerun the command.
``--set tiny=1`` is a smoke run (64 training images, 4 test images).
"""

from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import Cell, EvalSpec, StudyConfig
from qadv.training import TrainConfig

#: Cheap attacks first, as they are run.
ATTACKS = (
    "fgsm",
    "pgd",
    "pgd++njs",
    "pgd++hns",
    "transfer",
    "deepfool",
    "apgd-ce",
    "apgd-dlr",
    "square",
    "apgd-t",
    "fab-t",
)


def _cnn(policy: str, epochs: int) -> TrainConfig:
    extra = {"wq_method": "bc"} if policy == "bnn_wq" else {}
    return TrainConfig(dataset="fashion_mnist", arch="cnn", policy=policy, epochs=epochs, **extra)


def config(n: int = 200, eps: str = "8/255", epochs: int = 4, tiny: bool = False) -> Experiment:
    cells = tuple(Cell(p, _cnn(p, int(epochs)), group=p) for p in ("ref", "bnn_wq", "bnn_waq"))
    spec = EvalSpec(
        n=int(n),
        eps=(eps,),
        attacks=ATTACKS,
        attack_opts={"transfer": {"source": "pgd", "steps": 20}},
        ensemble="standard",
        batch_size=250,
        surrogate="ref",
    )
    part = Part("protocol", StudyConfig(cells, spec, name="Fashion-MNIST CNNs: every attack"))
    doc = __doc__.split("\n\n")[2]
    return finish(Experiment("Every attack on the Fashion-MNIST CNNs", (part,), "cpu", doc), tiny)
