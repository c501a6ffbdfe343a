"""BNN-WQ CNN on Fashion-MNIST, BinaryConnect: the baseline MD-tanh-S is compared with.

qadv train --config experiments/configs/fmnist_cnn_bnn_wq_bc.py --out runs/md_vs_bc/bc
"""

EPOCHS = 3
TRAIN_EXAMPLES = 30_000


def get_config():
    return {
        "seed": 0,
        "data": {"dataset": "fashion_mnist", "train_examples": TRAIN_EXAMPLES},
        "model": {"arch": "cnn"},
        "quant": {"policy": "bnn_wq", "wq_method": "bc"},
        "optim": {"epochs": EPOCHS, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
    }
