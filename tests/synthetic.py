"""Tiny synthetic datasets for tests: IDX files in the (Fashion-)MNIST layout."""

import gzip
import struct

import numpy as np


def write_idx(path, array):
    """Writes a uint8 array as an IDX file (gzip when the name ends with .gz)."""
    array = np.asarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(raw)


def write_mnist_like(folder, *, n_train=12, n_test=5, gz=True, seed=0, learnable=False):
    """Writes the four IDX files; ``learnable`` makes the label readable from the image."""
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        if learnable:  # a bright bar whose row encodes the class
            x = (x // 4).astype(np.uint8)
            for i, label in enumerate(y):
                x[i, 2 + 2 * label : 4 + 2 * label, :] = 255
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y)
        out[prefix] = (x, y)
    return out


def mnist_like_dir(tmp_path_factory, name, *, n_train, n_test):
    """``(root, root / "data")``: a fresh folder with a learnable MNIST-like data set."""
    root = tmp_path_factory.mktemp(name)
    data_dir = root / "data"
    data_dir.mkdir()
    write_mnist_like(data_dir, n_train=n_train, n_test=n_test, learnable=True)
    return root, data_dir


def relu_mlp(seed, *, n_in, hidden=12, d=5):
    """A fixed random ReLU MLP ``x (B, ...) -> logits (B, d)`` on ``n_in`` input pixels."""
    import math

    import jax
    import jax.numpy as jnp

    k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
    w1 = jax.random.normal(k1, (n_in, hidden), jnp.float32) * float(2.0 / math.sqrt(n_in))
    b1 = jax.random.normal(k2, (hidden,), jnp.float32) * 0.1
    w2 = jax.random.normal(k3, (hidden, d), jnp.float32) * float(2.0 / math.sqrt(hidden))

    def logits_fn(x):
        return jax.nn.relu(x.reshape(x.shape[0], -1) @ w1 + b1[None, :]) @ w2

    return logits_fn


# Every quantization policy with every BNN weight method: (policy name, policy options).
TRAIN_POLICIES = [
    ("ref", {}),
    ("bnn_wq", {"wq_method": "bc"}),
    ("bnn_wq", {"wq_method": "gd_tanh"}),
    ("bnn_wq", {"wq_method": "md_tanh_s"}),
    ("bnn_waq", {}),
    ("mbn3x1", {}),
    ("pact4", {}),
    ("xnor", {}),
]
