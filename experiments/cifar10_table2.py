"""The core paper's CIFAR-10 setting (Gupta & Ajanthan, Tables 2, 3 and 5) in one run, on
an accelerator host: float (``ref``), BNN-WQ (MD-tanh-S) and BNN-WAQ networks, every
attack of Table 2 plain and with the NJS and HNS temperatures, and the
``plus-temperature`` ensemble (AutoAttack's ``standard`` with PGD++ and APGD++).

    qadv study --config experiments/cifar10_table2.py --out results/cifar10_table2
    qadv study --config experiments/cifar10_table2.py --set archs=resnet18,vgg16 \
        --set epochs=200 --out results/cifar10_table2
    qadv study --config experiments/cifar10_table2.py --set binarynet=1 \
        --out results/cifar10_table2_binarynet
    qadv study --config experiments/cifar10_table2.py --set tiny=1 --out /tmp/smoke

Needs CIFAR-10 prepared for tfds on a connected machine:
``python -c "import tensorflow_datasets as tfds; tfds.data_source('cifar10', download=True)"``.
Networks: the paper-size networks of ``qadv.apps.paper_models`` (Adam, lr 1e-3, batch
128, ``epochs`` = 100; BNN-WQ by MD-tanh-S with β annealed to 100 and a 10 % hard-sign
phase), so they are the same checkpoint-store entries as
``experiments/gupta2021/table{2,3,5}.py --size paper`` and train once for all of them;
``binarynet=1`` uses the widened BinaryNet variants for BNN-WAQ (``binarynet_resnet18``,
as the authors' release). Attacks (Table 6, CIFAR-10): FGSM ε = η = 8/255, PGD-L∞
8/255, 2/255, 20 steps, PGD-L2 120/255, 15/255, 20 steps; the ensemble at L∞ 8/255;
the first ``n`` = 10,000 test images. Parts ``linf``, ``l2`` and ``ensemble``.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import Cell, StudyConfig

LINF = ("fgsm", "fgsm++njs", "fgsm++hns", "pgd", "pgd++njs", "pgd++hns")
L2 = ("pgd", "pgd++njs", "pgd++hns")


def _cells(archs: list[str], epochs: int, binarynet: bool) -> tuple[Cell, ...]:
    rows = []
    for a in archs:
        waq = f"binarynet_{a}" if binarynet else a
        rows += [(f"ref_{a}", "ref", a, {}), (f"bnn_wq_{a}", "bnn_wq", a, {})]
        rows.append((f"bnn_waq_{waq}", "bnn_waq", waq, {}))
    cells = pm.models(rows, "paper")
    return tuple(Cell(c.name, c.train.replace(epochs=epochs), group=c.group) for c in cells)


def _flag(name: str, value) -> bool:
    if str(value).lower() not in ("0", "1", "false", "true"):
        raise ValueError(f"invalid {name} {value!r}; choose 0/1 or false/true")
    return str(value).lower() in ("1", "true")


def config(
    archs: str = "resnet18",
    epochs: int = 100,
    n: int = 10_000,
    binarynet: bool = False,
    tiny: bool = False,
) -> Experiment:
    names = [a.strip() for a in str(archs).split(",") if a.strip()]
    cells = _cells(names, int(epochs), _flag("binarynet", binarynet))

    def spec(attacks, **kw):
        s = pm.attack_spec("paper", attacks, **kw)
        return s.__class__(**{**s.to_dict(), "n": int(n)})

    parts = (
        Part("linf", StudyConfig(cells, spec(LINF))),
        Part("l2", StudyConfig(cells, spec(L2, norm="l2"))),
        Part("ensemble", StudyConfig(cells, spec((), ensemble="plus-temperature"))),
    )
    doc = __doc__.split("\n\n")[2]
    return finish(Experiment("CIFAR-10: Tables 2, 3 and 5", parts, "paper", doc), tiny)
