"""Datasets as host numpy arrays: loading, deterministic shuffling and augmentation.

Images are stored as ``uint8`` arrays ``(N, H, W, C)`` and labels as ``int32``
``(N,)``. :func:`iterate_batches` turns them into ``float32`` batches in
``[0, 1]`` (NHWC), the format every qadv model expects; models normalise inside
with the ``mean``/``std`` given in :data:`DATASETS`.

Sources, in the order ``source="auto"`` tries them:

* ``fashion_mnist`` / ``mnist``: the four IDX files (``.gz`` or raw)
  ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` in ``data_dir``; for
  Fashion-MNIST without a ``data_dir``, the Debian package directory
  ``/usr/share/datasets/fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``).
  A ``data_dir`` that is given is the only IDX folder tried, never replaced by another.
* every dataset: ``tfds.data_source`` (random access, numpy records; works
  without TensorFlow). qadv never downloads by default (``download=False``):
  prepare the dataset once on a connected machine, e.g.
  ``python -c "import tensorflow_datasets as tfds; tfds.data_source('cifar10', download=True)"``
  (preparing may need TensorFlow; reading a prepared ``array_record`` dataset
  does not). ``tfds.load`` is not used because it needs TensorFlow, which is
  not a qadv dependency.
"""

from __future__ import annotations

import gzip
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetInfo",
    "augment_crop_flip",
    "default_eps",
    "get_dataset_info",
    "iterate_batches",
    "load_split",
    "num_batches",
    "prefetch",
    "read_idx",
]

T = TypeVar("T")

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_SOURCES = ("auto", "idx", "tfds")
_IDX_SPLITS = {"train": "train", "test": "t10k"}


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset.

    Attributes:
        name: tfds name, e.g. ``"cifar10"``.
        image_shape: ``(H, W, C)``.
        num_classes: number of labels.
        mean: per-channel mean of the training images in ``[0, 1]`` units.
        std: per-channel standard deviation of the training images.
        train_size: number of training examples of the full dataset.
        test_size: number of test examples of the full dataset.
        default_eps: the L∞ radius the literature evaluates this dataset at, in ``[0, 1]``
            pixel units (0.1 for (Fashion-)MNIST, 8/255 for CIFAR).
    """

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int
    test_size: int
    default_eps: float = 8 / 255


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist", (28, 28, 1), 10, (0.2860,), (0.3530,), 60_000, 10_000, 0.1
    ),
    "mnist": DatasetInfo("mnist", (28, 28, 1), 10, (0.1307,), (0.3081,), 60_000, 10_000, 0.1),
    # Fashion-MNIST zero-padded by 2 pixels to 32×32, the input size of the CIFAR
    # architectures (statistics of the padded images).
    "fashion_mnist32": DatasetInfo(
        "fashion_mnist32", (32, 32, 1), 10, (0.2190,), (0.3318,), 60_000, 10_000, 0.1
    ),
    "cifar10": DatasetInfo(
        "cifar10",
        (32, 32, 3),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        50_000,
        10_000,
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        (32, 32, 3),
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        50_000,
        10_000,
    ),
}


def get_dataset_info(name: str) -> DatasetInfo:
    """Returns the :class:`DatasetInfo` of ``name``.

    Example:
        >>> get_dataset_info("cifar10").num_classes
        10
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def default_eps(name: str) -> float:
    """The L∞ radius at which ``name`` is usually evaluated (``[0, 1]`` pixel units): the
    radius an evaluation uses when none is given.

    Example:
        >>> default_eps("fashion_mnist"), round(default_eps("cifar10") * 255, 6)
        (0.1, 8.0)
    """
    return get_dataset_info(name).default_eps


#: Datasets served as another dataset's images zero-padded to 32×32.
_PADDED = {"fashion_mnist32": "fashion_mnist"}

# ----------------------------------------------------------------------------- IDX files


def _parse_idx(data: bytes, where: str) -> np.ndarray:
    if len(data) < 4:
        raise ValueError(f"{where}: not an IDX file (only {len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{where}: bad IDX magic number {data[:4].hex()} (must start with 0000)")
    if data[2] != 0x08:
        raise ValueError(
            f"{where}: IDX data type 0x{data[2]:02x} is not supported (only 0x08, unsigned byte)"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise ValueError(f"{where}: truncated IDX header ({len(data)} bytes, ndim={ndim})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "oversized"
        raise ValueError(
            f"{where}: {kind} IDX file: {len(data)} bytes, header shape {shape} needs {expected}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or raw) of unsigned bytes.

    Args:
        path: file path; a ``.gz`` suffix means gzip.

    Returns:
        ``uint8`` array with the shape stored in the header.

    Raises:
        ValueError: bad magic number, unsupported type, or truncated data.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9]))
        >>> read_idx(p).tolist()
        [7, 9]
    """
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (EOFError, OSError, gzip.BadGzipFile) as e:
        raise ValueError(f"{path}: cannot read IDX file ({type(e).__name__}: {e})") from None
    return _parse_idx(data, str(path))


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    for name in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_paths(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = _IDX_SPLITS[split]
    images = _find_idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find_idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images is not None and labels is not None else None


def _load_idx_split(folder: Path, split: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    paths = _idx_paths(folder, split)
    if paths is None:
        raise ValueError(f"no IDX files for split {split!r} in {folder}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    h, w, c = info.image_shape
    if images.ndim != 3 or images.shape[1:] != (h, w):
        raise ValueError(f"{paths[0]}: images have shape {images.shape}, expected (N, {h}, {w})")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{paths[1]}: labels shape {labels.shape} does not match {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) >= info.num_classes:
        raise ValueError(f"{paths[1]}: label {int(labels.max())} >= {info.num_classes} classes")
    return images.reshape(-1, h, w, c).copy(), labels.astype(np.int32)


# ----------------------------------------------------------------------------- tfds


def _load_tfds_split(
    name: str, split: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # imported lazily: slow and noisy

    source = tfds.data_source(
        name, split=split, data_dir=None if data_dir is None else str(data_dir), download=download
    )
    n = len(source)
    info = DATASETS[name]
    images = np.empty((n, *info.image_shape), dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32)
    for i in range(n):
        record = source[i]
        images[i] = np.asarray(record["image"], dtype=np.uint8).reshape(info.image_shape)
        labels[i] = int(record["label"])
    return images, labels


def _no_source_error(name: str, split: str, data_dir, reasons: list[str]) -> ValueError:
    ways = []
    if name == "fashion_mnist":
        ways.append(
            "install the Debian package (apt-get install -y dataset-fashion-mnist, "
            f"files land in {DEBIAN_FASHION_MNIST_DIR}, read when no data_dir is given)"
        )
    if name in ("fashion_mnist", "mnist"):
        ways.append(
            "pass --data-dir / data_dir= a folder with the four IDX files "
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte (.gz or raw)"
        )
    ways.append(
        f"prepare it with tfds on a connected machine (tfds.data_source({name!r}, download=True), "
        "array_record format) and pass its tfds data_dir"
    )
    tried = "; ".join(reasons)
    return ValueError(
        f"no data source found for dataset {name!r} split {split!r} (data_dir={data_dir}); "
        f"to get it: "
        + " OR ".join(f"({i + 1}) {w}" for i, w in enumerate(ways))
        + f" [tried: {tried}]"
    )


def load_split(
    name: str,
    split: str,
    *,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of a dataset into host memory.

    Args:
        name: one of :data:`DATASETS`.
        split: ``"train"`` or ``"test"`` (tfds sources also accept slices such
            as ``"train[:10%]"``).
        data_dir: folder with the IDX files (MNIST-like datasets) or a tfds
            data directory; ``None``: the Debian package's folder (Fashion-MNIST),
            then tfds's default.
        source: ``"auto"`` (IDX files first, then tfds), ``"idx"`` or ``"tfds"``.
        download: let tfds download and prepare the dataset (needs network).

    Returns:
        ``(images, labels)``: ``uint8 (N, H, W, C)`` and ``int32 (N,)`` numpy arrays.

    Raises:
        ValueError: unknown name/split/source, corrupt files, or no source found
            (the message names each way to get the data).

    Example:
        >>> import tensorflow_datasets as tfds
        >>> with tfds.testing.mock_data(num_examples=3):
        ...     x, y = load_split("cifar10", "test", source="tfds")
        >>> x.shape, x.dtype.name, y.dtype.name
        ((3, 32, 32, 3), 'uint8', 'int32')
    """
    info = get_dataset_info(name)
    if name in _PADDED:  # the same images, zero-padded to 32×32
        x, y = load_split(_PADDED[name], split, data_dir=data_dir, source=source, download=download)
        return np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), y
    if source not in _SOURCES:
        raise ValueError(f"unknown data source {source!r}; choose one of: {', '.join(_SOURCES)}")
    idx_capable = name in ("fashion_mnist", "mnist")
    if source == "idx" and not idx_capable:
        raise ValueError(f"source 'idx' is only for fashion_mnist and mnist, not {name!r}")
    base_split = split.split("[")[0]
    if base_split not in _IDX_SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of: train, test")
    reasons: list[str] = []

    if idx_capable and source in ("auto", "idx"):
        # a folder the caller names is the only IDX folder tried: data from elsewhere
        # would be scored as if it were theirs
        if data_dir is not None:
            folders = [Path(data_dir)]
        else:
            folders = [DEBIAN_FASHION_MNIST_DIR] if name == "fashion_mnist" else []
        for folder in folders:
            if _idx_paths(folder, base_split) is None:
                reasons.append(f"no IDX files in {folder}")
                continue
            if split != base_split:
                raise ValueError(f"split slicing {split!r} is only supported for tfds sources")
            return _load_idx_split(folder, base_split, info)
        if source == "idx":
            raise _no_source_error(name, split, data_dir, reasons)

    try:
        return _load_tfds_split(name, split, data_dir, download)
    except Exception as e:  # tfds raises many types for "not prepared"
        first_line = (str(e).strip().splitlines() or [""])[0][:200]
        reasons.append(f"tfds: {type(e).__name__}: {first_line}")
    raise _no_source_error(name, split, data_dir, reasons)


# ----------------------------------------------------------------------------- batches


def _rng(seed: int, epoch: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(epoch), *stream])


def augment_crop_flip(images: np.ndarray, *, rng: np.random.Generator, pad: int = 4) -> np.ndarray:
    """Random crop after zero padding by ``pad`` pixels, then random horizontal flip.

    Args:
        images: ``(B, H, W, C)`` array, any dtype.
        rng: numpy generator; the result is a pure function of its state.
        pad: padding on each side; crops are ``H × W``.

    Returns:
        Array of the same shape and dtype.

    Example:
        >>> x = np.arange(2 * 4 * 4).reshape(2, 4, 4, 1).astype(np.uint8)
        >>> augment_crop_flip(x, rng=np.random.default_rng(0), pad=1).shape
        (2, 4, 4, 1)
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    dy = rng.integers(0, 2 * pad + 1, size=b)
    dx = rng.integers(0, 2 * pad + 1, size=b)
    flip = rng.random(size=b) < 0.5
    rows = dy[:, None] + np.arange(h)[None, :]  # (B, H)
    cols = np.where(flip[:, None], np.arange(w)[None, ::-1], np.arange(w)[None, :])
    cols = dx[:, None] + cols  # (B, W)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = True) -> int:
    """Number of batches :func:`iterate_batches` yields for ``n`` examples.

    Example:
        >>> num_batches(10, 4), num_batches(10, 4, drop_remainder=False)
        (2, 3)
    """
    return n // batch_size if drop_remainder else -(-n // batch_size)


def iterate_batches(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    shuffle: bool = True,
    augment: bool = False,
    drop_remainder: bool = True,
    start: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(float32 images in [0, 1], int32 labels)`` numpy batches.

    The order is a pure function of ``(seed, epoch)``; the augmentation of batch
    ``i`` is a pure function of ``(seed, epoch, i)``. So an epoch can be resumed
    at batch ``start`` and yield exactly the batches an uninterrupted pass would.

    Args:
        images: ``uint8 (N, H, W, C)`` (or float in ``[0, 1]``).
        labels: ``(N,)`` integer labels.
        batch_size: examples per batch.
        seed: data seed.
        epoch: epoch number (selects the permutation).
        shuffle: permute the examples.
        augment: random crop (4-pixel zero padding) and horizontal flip.
        drop_remainder: drop the last incomplete batch.
        start: index of the first batch to yield.

    Example:
        >>> x = np.zeros((10, 2, 2, 1), np.uint8); y = np.arange(10)
        >>> batches = iterate_batches(x, y, batch_size=4, seed=0, epoch=0, shuffle=False)
        >>> [b[1].tolist() for b in batches]
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"need images (N,H,W,C) and labels (N,), got {images.shape} and {labels.shape}"
        )
    n = images.shape[0]
    order = _rng(seed, epoch).permutation(n) if shuffle else np.arange(n)
    scale = np.float32(1.0 / 255.0) if images.dtype == np.uint8 else np.float32(1.0)
    for i in range(start, num_batches(n, batch_size, drop_remainder=drop_remainder)):
        idx = order[i * batch_size : (i + 1) * batch_size]
        x = images[idx]
        if augment:
            x = augment_crop_flip(x, rng=_rng(seed, epoch, i, 1))
        yield x.astype(np.float32) * scale, labels[idx].astype(np.int32)


def prefetch(
    batches: Iterable[T], *, size: int = 2, put: Callable[[T], T] | None = None
) -> Iterator[T]:
    """Yield ``batches`` in order while a background thread prepares up to ``size`` of
    them ahead (gathering, augmenting and, with ``put``, e.g. ``jax.device_put``, copying
    them to the device), so the accelerator does not wait for the host between steps.

    An exception of the producer is raised at the batch where it happened; closing the
    generator (or leaving the loop) stops the thread.

    Example:
        >>> list(prefetch(iter(range(5)), size=2, put=lambda b: b * 10))
        [0, 10, 20, 30, 40]
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"invalid prefetch size {size!r}; choose a positive integer")
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for b in batches:
                if not offer((put(b) if put is not None else b, None)):
                    return
            offer((end, None))
        except BaseException as e:  # handed to the consumer
            offer((end, e))

    thread = threading.Thread(target=produce, name="qadv-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
