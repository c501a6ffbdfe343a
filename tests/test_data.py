"""Tests for qadv.data: IDX loading, tfds loading, deterministic batches and augmentation."""

import time

import jax
import numpy as np
import pytest
from synthetic import write_mnist_like

from qadv import data


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    written = write_mnist_like(tmp_path, gz=gz)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = data.load_split("mnist", split, data_dir=tmp_path, source="idx")
        assert x.dtype == np.uint8 and x.shape == (written[prefix][0].shape[0], 28, 28, 1)
        assert y.dtype == np.int32
        np.testing.assert_array_equal(x[..., 0], written[prefix][0])
        np.testing.assert_array_equal(y, written[prefix][1])


def test_idx_auto_prefers_data_dir(tmp_path):
    write_mnist_like(tmp_path, n_train=7)
    x, _ = data.load_split("fashion_mnist", "train", data_dir=tmp_path)
    assert x.shape[0] == 7


@pytest.mark.parametrize("gz", [True, False])
def test_truncated_idx_is_a_clear_error(tmp_path, gz):
    write_mnist_like(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match=r"truncated|cannot read") as info:
        data.load_split("mnist", "train", data_dir=tmp_path, source="idx")
    assert "\n" not in str(info.value) and name in str(info.value)


def test_bad_magic_is_a_clear_error(tmp_path):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(bytes([1, 2, 8, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(path)
    path.write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1, 5, 5, 5, 5]))
    with pytest.raises(ValueError, match="data type"):
        data.read_idx(path)


def test_missing_source_names_every_way(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "nope")

    def no_tfds(*args, **kwargs):
        raise KeyError("dataset not generated")

    monkeypatch.setattr(data, "_load_tfds_split", no_tfds)
    with pytest.raises(ValueError) as info:
        data.load_split("fashion_mnist", "train", data_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "data_dir" in msg and "train-images-idx3-ubyte" in msg
    assert "tfds" in msg and "download=True" in msg


def test_a_named_folder_is_never_replaced_by_the_installed_data(tmp_path, monkeypatch):
    """``data_dir`` given and empty: refused, even where the Debian package's
    Fashion-MNIST is installed; without ``data_dir`` that package is read."""
    installed = tmp_path / "installed"
    installed.mkdir()
    write_mnist_like(installed, n_train=6, n_test=3)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", installed)

    def no_tfds(*args, **kwargs):
        raise KeyError("dataset not generated")

    monkeypatch.setattr(data, "_load_tfds_split", no_tfds)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no IDX files in .*empty"):
        data.load_split("fashion_mnist", "test", data_dir=tmp_path / "empty")
    x, y = data.load_split("fashion_mnist", "test")
    assert x.shape == (3, 28, 28, 1) and y.shape == (3,)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; choose one of: fashion_mnist"):
        data.load_split("svhn", "train")
    with pytest.raises(ValueError, match="unknown split"):
        data.load_split("mnist", "validation")
    with pytest.raises(ValueError, match="unknown data source"):
        data.load_split("mnist", "train", source="web")
    with pytest.raises(ValueError, match="only for fashion_mnist and mnist"):
        data.load_split("cifar10", "train", source="idx")


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10", "cifar100"])
def test_tfds_mock(name):
    tfds = pytest.importorskip("tensorflow_datasets")
    info = data.DATASETS[name]
    with tfds.testing.mock_data(num_examples=6):
        x, y = data.load_split(name, "train", source="tfds")
    assert x.shape == (6, *info.image_shape) and x.dtype == np.uint8
    assert y.shape == (6,) and y.dtype == np.int32
    assert ((0 <= y) & (y < info.num_classes)).all()


def test_dataset_info():
    for name, info in data.DATASETS.items():
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.image_shape[-1]
    assert data.get_dataset_info("fashion_mnist").mean == (0.2860,)


def _epoch(x, y, **kw):
    return list(data.iterate_batches(x, y, **kw))


def test_batches_deterministic_by_seed_and_epoch():
    x = np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1)
    y = np.arange(20)
    kw = dict(batch_size=6, seed=3, augment=False)
    a, b = _epoch(x, y, epoch=0, **kw), _epoch(x, y, epoch=0, **kw)
    c = _epoch(x, y, epoch=1, **kw)
    assert len(a) == 3  # drop_remainder
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(np.concatenate([t[1] for t in a]), np.concatenate([t[1] for t in c]))
    # images and labels stay paired; values scaled to [0, 1] float32
    xa, ya = a[0]
    assert xa.dtype == np.float32 and ya.dtype == np.int32
    np.testing.assert_allclose(xa[:, 0, 0, 0] * 255, ya, atol=1e-4)
    # resuming at batch 1 yields the same tail
    tail = _epoch(x, y, epoch=0, start=1, **kw)
    for (xa, _), (xt, _) in zip(a[1:], tail, strict=True):
        np.testing.assert_array_equal(xa, xt)
    full = _epoch(x, y, batch_size=6, seed=0, epoch=0, shuffle=False, drop_remainder=False)
    assert [len(t[1]) for t in full] == [6, 6, 6, 2]


def test_augmentation_deterministic_and_shape_preserving():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
    y = np.zeros(16, np.int32)
    kw = dict(batch_size=8, seed=1, epoch=2, augment=True)
    a, b = _epoch(x, y, **kw), _epoch(x, y, **kw)
    for (xa, _), (xb, _) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
    c = _epoch(x, y, **{**kw, "seed": 2})
    assert not np.array_equal(a[0][0], c[0][0])
    assert a[0][0].shape == (8, 32, 32, 3)


def test_augment_crop_flip_is_a_shifted_crop():
    x = np.arange(36, dtype=np.uint8).reshape(1, 6, 6, 1) + 1
    out = data.augment_crop_flip(np.repeat(x, 50, axis=0), rng=np.random.default_rng(0), pad=2)
    padded = np.pad(x[0, ..., 0], 2)
    for img in out[..., 0]:
        matches = [
            np.array_equal(img, cand)
            for dy in range(5)
            for dx in range(5)
            for cand in (
                padded[dy : dy + 6, dx : dx + 6],
                padded[dy : dy + 6, dx : dx + 6][:, ::-1],
            )
        ]
        assert any(matches)
    # both flips and several offsets occur
    assert len({img.tobytes() for img in out}) > 5


def test_default_eps_is_the_datasets_usual_linf_radius():
    assert data.default_eps("mnist") == data.default_eps("fashion_mnist") == 0.1
    assert data.default_eps("cifar10") == data.default_eps("cifar100") == pytest.approx(8 / 255)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; choose one of"):
        data.default_eps("svhn")


# ----------------------------------------------------------------------------- prefetch


def test_prefetch_yields_every_batch_in_order_and_placed():
    x = np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1)
    y = np.arange(10)
    kw = dict(batch_size=3, seed=1, epoch=2)
    plain = list(data.iterate_batches(x, y, **kw))
    ahead = list(data.prefetch(data.iterate_batches(x, y, **kw), size=2, put=jax.device_put))
    assert len(ahead) == len(plain) == 3
    for (xa, ya), (xp, yp) in zip(ahead, plain, strict=True):
        assert isinstance(xa, jax.Array)
        np.testing.assert_array_equal(np.asarray(xa), xp)
        np.testing.assert_array_equal(np.asarray(ya), yp)


def test_prefetch_raises_the_producers_error_where_it_happened():
    def batches():
        yield 1
        yield 2
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for b in data.prefetch(batches(), size=1):
            got.append(b)
    assert got == [1, 2]


def test_prefetch_stops_its_thread_when_the_loop_is_left():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    gen = data.prefetch(endless(), size=2)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()
    time.sleep(0.5)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n <= 3 + 2 + 1  # stopped, at most `size` (+1 in hand) ahead


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
def test_prefetch_refuses_a_bad_size(size):
    with pytest.raises(ValueError, match="invalid prefetch size"):
        next(data.prefetch(iter([1]), size=size))
