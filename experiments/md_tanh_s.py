"""MD-tanh-S against BinaryConnect on the Fashion-MNIST BNN-WQ CNN, at equal epochs and
data, with ablations of the hard-sign phase and BatchNorm re-estimation; then whether the
weight method changes how much the network masks its gradients (PGD against PGD++).

    qadv study --config experiments/md_tanh_s.py --out results/md_vs_bc

Networks (the training configs ``experiments/configs/fmnist_cnn_bnn_wq_{bc,md}.py``: the
small CNN, 3 epochs of Adam, lr 1e-3, cosine, batch 128, on the first 30,000 training
images, seed 0): ``bc`` BinaryConnect; ``md`` MD-tanh-S with β annealed to 1000, the last
25 % of the steps on hard signs, BatchNorm re-estimated on the hard network;
``md_b100_h10`` β to 100 and a 10 % hard phase; ``md_b100_plain`` β to 100, no hard
phase, no re-estimation (the earlier recipe). Clean accuracy is the hard ±1 network on
the full test set; PGD-20 (η = ε/4) and PGD++ (NJS, HNS) at L∞ ε = 0.1 on the first
``n`` = 500 test images. About 30 min on 2 CPU cores (training 6-8 min per network).
A killed run resumes: rerun the command. ``--set tiny=1`` is a smoke run.
"""

from pathlib import Path

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import Cell, StudyConfig
from qadv.training import load_config_file

_CONFIGS = Path(__file__).with_name("configs")

#: name, training config file, overrides
RUNS = (
    ("bc", "fmnist_cnn_bnn_wq_bc.py", {}),
    ("md", "fmnist_cnn_bnn_wq_md.py", {}),
    ("md_b100_h10", "fmnist_cnn_bnn_wq_md.py", {"anneal_end": 100.0, "hard_fraction": 0.1}),
    (
        "md_b100_plain",
        "fmnist_cnn_bnn_wq_md.py",
        {"anneal_end": 100.0, "hard_fraction": 0.0, "recalibrate_bn": False},
    ),
)


def config(n: int = 500, tiny: bool = False) -> Experiment:
    cells = tuple(
        Cell(name, load_config_file(_CONFIGS / file, over), group=name) for name, file, over in RUNS
    )
    spec = pm.attack_spec("cpu", ("pgd", "pgd++njs", "pgd++hns"))
    spec = spec.__class__(**{**spec.to_dict(), "n": int(n)})
    part = Part("md_vs_bc", StudyConfig(cells, spec, name="MD-tanh-S against BinaryConnect"))
    doc = __doc__.split("\n\n")[2]
    return finish(Experiment("MD-tanh-S against BinaryConnect", (part,), "cpu", doc), tiny)
