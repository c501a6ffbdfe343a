"""Quantization-aware training with resumable orbax checkpoints.

:func:`train` trains any qadv architecture under any quantization policy on one
of :data:`qadv.data.DATASETS` and writes a run folder::

    out_dir/checkpoints/<step>/   orbax checkpoints (see :mod:`qadv.checkpoint`)
    out_dir/metrics.jsonl         one JSON line per epoch
    out_dir/summary.json          final summary (also returned)

Later commands need only the run folder: :func:`load_checkpoint` rebuilds the
model from the checkpoint metadata.

Determinism and resumption: the data order of epoch ``e`` is a pure function
of ``(seed, e)`` and augmentation of batch ``i`` of ``(seed, e, i)``; any
per-step randomness uses ``jax.random.fold_in(key, step)``. A run that is
killed and restarted with the same config resumes from its last finished
checkpoint (epoch end or, with ``checkpoint_every_steps``, mid-epoch) and
reaches the same parameters as an uninterrupted run.

Quantization details:

* ``anneal``: the tanh sharpness ``beta`` of ``gd_tanh``/``md_tanh_s`` weights
  is constant within an epoch and grows geometrically across epochs:
  ``beta_e = anneal_start * anneal_growth ** e`` (``e`` = 0-based epoch),
  capped at ``anneal_max`` when set. With ``anneal_end`` set, ``beta`` instead grows
  geometrically at every step, from ``anneal_start`` at the first step to
  ``anneal_end`` at the last, so that ``tanh(beta w)`` is saturated (nearly ±1) when
  training ends whatever the schedule length; short schedules need this, because
  evaluation uses hard ±1 weights.
* BinaryConnect (``wq_method="bc"`` with ``bnn_wq`` or ``bnn_waq``): after each
  optimizer update the latent binarised parameters (``kernel``, and ``bias`` for
  ``bnn_wq`` without ``float_bias``) are projected onto ``[-1, 1]``
  (:func:`binary_connect_projection`). Layers kept in float by ``float_first`` /
  ``float_last`` are clipped too (parameter names do not tell the layer role).
* Weight decay applies to parameters with ``ndim > 1`` (kernels), decoupled for
  Adam (AdamW) and added to the gradient for SGD (``add_decayed_weights``).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from qadv import report
from qadv.checkpoint import (
    CHECKPOINT_SUBDIR,
    VARIABLE_COLLECTIONS,
    LoadedModel,
    complete_steps,
    json_tuples,
    load_checkpoint,
    open_manager,
    read_metadata,
    restore_checkpoint,
    save_checkpoint,
)
from qadv.data import DATASETS, get_dataset_info, iterate_batches, load_split, num_batches
from qadv.models import MODEL_NAMES, get_model, init_variables
from qadv.quant import QuantPolicy, get_policy

__all__ = [
    "LoadedModel",
    "TrainConfig",
    "anneal_value",
    "binary_connect_projection",
    "clip_latent_weights",
    "evaluate_clean",
    "init_train_state",
    "load_checkpoint",
    "make_model",
    "make_optimizer",
    "make_policy",
    "make_schedule",
    "make_train_step",
    "train",
]


def _qadv_version() -> str:
    try:
        return importlib.metadata.version("qadv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


OPTIMIZERS = ("adam", "sgd")
# Variable collections carried through training besides "params" (others, such as the
# "quantized" tensors the layers sow, are diagnostics and are dropped).
STATE_COLLECTIONS = tuple(c for c in VARIABLE_COLLECTIONS if c != "params")
SCHEDULES = ("cosine", "step", "constant")
_SOURCES = ("auto", "idx", "tfds")
# Fields that may change when a run is resumed (they do not change the trained weights,
# except `epochs`, which extends or shortens the schedule).
_RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "checkpoint_every_epochs",
        "checkpoint_every_steps",
        "max_to_keep",
        "eval_batch_size",
    }
)


def _positive_int(name: str, value: Any, *, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"invalid {name} {value!r}; choose a positive integer")


def _choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of: {', '.join(allowed)}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in the checkpoint metadata).

    Attributes:
        dataset: one of :data:`qadv.data.DATASETS`.
        arch: one of :data:`qadv.models.MODEL_NAMES`.
        policy: quantization policy name for :func:`qadv.quant.get_policy`
            (``ref``, ``bnn_wq``, ``bnn_waq``, ``mbn``, ``pact``, ``xnor``,
            ``pact<k>``, ``mbn<M>x<N>``).
        policy_opts: extra :class:`qadv.quant.QuantPolicy` fields, e.g.
            ``{"float_last": True}``.
        wq_method: BNN weight method ``bc``/``gd_tanh``/``md_tanh_s``; ``None``
            keeps the policy default.
        arch_opts: extra keyword arguments of :func:`qadv.models.get_model`.
        epochs: number of epochs.
        batch_size: training batch size (the last incomplete batch is dropped).
        optimizer: ``adam`` or ``sgd`` (with ``momentum``/``nesterov``).
        lr: peak learning rate.
        schedule: ``cosine`` (to 0 over all steps), ``step`` (multiply by
            ``lr_gamma`` at each fraction of ``lr_milestones`` of all steps) or
            ``constant``.
        lr_milestones: fractions of training at which ``step`` decays.
        lr_gamma: decay factor of ``step``.
        weight_decay: decoupled for Adam (AdamW), L2 added to the gradient for
            SGD; kernels only.
        momentum: SGD momentum (0 disables it).
        nesterov: SGD Nesterov momentum.
        anneal_start: tanh ``beta`` in epoch 0.
        anneal_growth: factor applied to ``beta`` every epoch.
        anneal_max: optional cap on ``beta``.
        anneal_end: if set, ``beta`` grows geometrically per step from
            ``anneal_start`` to ``anneal_end`` over the whole run (overrides
            ``anneal_growth``).
        augment: random crop + flip; ``None`` means on for CIFAR, off otherwise.
        seed: seed of initialization, data order, augmentation and step keys.
        eval_batch_size: batch size of the test evaluation.
        checkpoint_every_epochs: save every this many epochs (the last epoch
            is always saved).
        checkpoint_every_steps: also save every this many steps (mid-epoch).
        max_to_keep: number of checkpoints kept (``None`` keeps all).
        train_examples: use only the first this many training examples.
        test_examples: use only the first this many test examples.
        source: data source for :func:`qadv.data.load_split`.

    Example:
        >>> TrainConfig(arch="mlp", epochs=1).optimizer
        'adam'
        >>> TrainConfig(optimizer="rmsprop")
        Traceback (most recent call last):
        ...
        ValueError: unknown optimizer 'rmsprop'; choose one of: adam, sgd
    """

    dataset: str = "fashion_mnist"
    arch: str = "cnn"
    policy: str = "ref"
    policy_opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    wq_method: str | None = None
    arch_opts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.1
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    anneal_start: float = 1.0
    anneal_growth: float = 1.2
    anneal_max: float | None = None
    anneal_end: float | None = None
    augment: bool | None = None
    seed: int = 0
    eval_batch_size: int = 500
    checkpoint_every_epochs: int = 1
    checkpoint_every_steps: int | None = None
    max_to_keep: int | None = 3
    train_examples: int | None = None
    test_examples: int | None = None
    source: str = "auto"

    def __post_init__(self):
        _choice("dataset", self.dataset, tuple(DATASETS))
        _choice("arch", self.arch, tuple(MODEL_NAMES))
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("data source", self.source, _SOURCES)
        for name in ("epochs", "batch_size", "eval_batch_size", "checkpoint_every_epochs"):
            _positive_int(name, getattr(self, name))
        for name in ("checkpoint_every_steps", "max_to_keep", "train_examples", "test_examples"):
            _positive_int(name, getattr(self, name), allow_none=True)
        if (
            not isinstance(self.seed, int | np.integer)
            or isinstance(self.seed, bool)
            or self.seed < 0
        ):
            raise ValueError(f"invalid seed {self.seed!r}; choose an integer >= 0")
        for name in ("lr", "lr_gamma", "anneal_start", "anneal_growth"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"invalid {name} {value!r}; choose a positive number")
        if self.anneal_end is not None and not self.anneal_end >= self.anneal_start:
            raise ValueError(
                f"invalid anneal_end {self.anneal_end!r}; choose a number >= anneal_start"
            )
        if self.anneal_max is not None and not self.anneal_max > 0:
            raise ValueError(f"invalid anneal_max {self.anneal_max!r}; choose a positive number")
        if not self.weight_decay >= 0:
            raise ValueError(f"invalid weight_decay {self.weight_decay!r}; choose a number >= 0")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"invalid momentum {self.momentum!r}; choose a number in [0, 1)")
        object.__setattr__(self, "lr_milestones", tuple(float(m) for m in self.lr_milestones))
        for name in (
            "arch_opts",
            "policy_opts",
        ):  # JSON lists -> tuples, so round trips compare equal
            object.__setattr__(self, name, json_tuples(dict(getattr(self, name))))
        if any(not 0 < m < 1 for m in self.lr_milestones):
            raise ValueError(
                f"invalid lr_milestones {self.lr_milestones!r}; choose fractions in (0, 1)"
            )
        if self.augment not in (None, True, False):
            raise ValueError(f"invalid augment {self.augment!r}; choose True, False or None")
        make_policy(self)  # raises on unknown policy names/options

    def to_dict(self) -> dict:
        """JSON-ready dict; inverse of :meth:`from_dict`."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Builds a config from :meth:`to_dict` output (unknown keys raise ``ValueError``).

        Example:
            >>> c = TrainConfig(arch="mlp", lr_milestones=(0.3,))
            >>> TrainConfig.from_dict(c.to_dict()) == c
            True
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - fields)
        if bad:
            raise ValueError(
                f"unknown TrainConfig field {bad[0]!r}; choose from: {', '.join(sorted(fields))}"
            )
        d = dict(d)
        if "lr_milestones" in d:
            d["lr_milestones"] = tuple(d["lr_milestones"])
        return cls(**d)

    @property
    def use_augment(self) -> bool:
        """Whether training batches are augmented."""
        return self.dataset.startswith("cifar") if self.augment is None else self.augment


# ----------------------------------------------------------------------------- building blocks


def make_policy(config: TrainConfig) -> QuantPolicy:
    """The :class:`qadv.quant.QuantPolicy` of a config."""
    opts = dict(config.policy_opts)
    if config.wq_method is not None:
        opts["wq_method"] = config.wq_method
    return get_policy(config.policy, **opts)


def make_model(config: TrainConfig):
    """The Flax module of a config (normalisation constants from the dataset)."""
    info = get_dataset_info(config.dataset)
    return get_model(
        config.arch,
        num_classes=info.num_classes,
        policy=make_policy(config),
        mean=info.mean,
        std=info.std,
        **config.arch_opts,
    )


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Learning-rate schedule over ``config.epochs * steps_per_epoch`` steps.

    Example:
        >>> s = make_schedule(TrainConfig(arch="mlp", epochs=4, lr=1.0, schedule="step"), 10)
        >>> [float(s(i)) for i in (0, 19, 20, 30)]
        [1.0, 1.0, 0.10000000149011612, 0.010000000707805157]
    """
    total = max(config.epochs * steps_per_epoch, 1)
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, decay_steps=total)
    boundaries = {round(m * total): config.lr_gamma for m in config.lr_milestones}
    return optax.piecewise_constant_schedule(config.lr, boundaries)


def _kernel_mask(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer of a config (see :class:`TrainConfig` for the options)."""
    schedule = make_schedule(config, steps_per_epoch)
    if config.optimizer == "adam":
        if config.weight_decay > 0:
            return optax.adamw(schedule, weight_decay=config.weight_decay, mask=_kernel_mask)
        return optax.adam(schedule)
    parts = []
    if config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(config.weight_decay, mask=_kernel_mask))
    parts.append(optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))
    return optax.chain(*parts)


def anneal_value(config: TrainConfig, epoch: int, *, step: int = 0, total_steps: int = 1) -> float:
    """Tanh annealing ``beta`` of (0-based) ``epoch``, or of ``step`` with ``anneal_end``.

    Example:
        >>> anneal_value(TrainConfig(arch="mlp", anneal_start=1.0, anneal_growth=2.0), 3)
        8.0
    """
    if config.anneal_end is not None:
        frac = min(step / max(total_steps - 1, 1), 1.0)
        return float(config.anneal_start * (config.anneal_end / config.anneal_start) ** frac)
    beta = config.anneal_start * config.anneal_growth**epoch
    return float(min(beta, config.anneal_max) if config.anneal_max is not None else beta)


def clip_latent_weights(params, *, names: tuple[str, ...] = ("kernel",), bound: float = 1.0):
    """BinaryConnect projection: clips the parameters called one of ``names`` to ``[-b, b]``.

    Example:
        >>> p = {"Dense_0": {"kernel": jnp.array([[-3.0, 0.5]]), "bias": jnp.array([2.0])}}
        >>> jax.tree.map(lambda a: a.tolist(), clip_latent_weights(p))
        {'Dense_0': {'bias': [2.0], 'kernel': [[-1.0, 0.5]]}}
    """

    def clip(path, leaf):
        name = getattr(path[-1], "key", None) if path else None
        return jnp.clip(leaf, -bound, bound) if name in names else leaf

    return jax.tree_util.tree_map_with_path(clip, params)


def binary_connect_projection(policy: QuantPolicy) -> Callable[[Any], Any] | None:
    """The post-update projection of ``policy``: BinaryConnect clipping, or ``None``.

    With ``wq_method="bc"``, ``bnn_wq`` clips kernels and (unless ``float_bias``)
    biases, which it binarises too; ``bnn_waq`` clips kernels. Other policies
    and methods need no projection.

    Example:
        >>> from qadv.quant import get_policy
        >>> binary_connect_projection(get_policy("bnn_wq", wq_method="md_tanh_s")) is None
        True
    """
    if policy.wq_method != "bc" or policy.kind not in ("bnn_wq", "bnn_waq"):
        return None
    names = ("kernel", "bias") if policy.kind == "bnn_wq" and not policy.float_bias else ("kernel",)
    return functools.partial(clip_latent_weights, names=names)


def _zero_accumulators() -> dict:
    return {
        "loss": jnp.zeros((), jnp.float32),
        "correct": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.float32),
    }


def init_train_state(model, tx: optax.GradientTransformation, *, key: jax.Array, input_shape):
    """Initial training state: a dict pytree.

    Keys: ``step`` (int32 scalar), ``params``, ``model_state`` (non-param
    collections such as ``batch_stats``), ``opt_state`` and ``acc`` (running
    loss/correct/count of the current epoch).
    """
    variables = init_variables(model, key=key, input_shape=tuple(input_shape))
    params = variables["params"]
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "model_state": {k: v for k, v in variables.items() if k in STATE_COLLECTIONS},
        "opt_state": tx.init(params),
        "acc": _zero_accumulators(),
    }


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    *,
    key: jax.Array,
    project: Callable[[Any], Any] | None = None,
) -> Callable:
    """Jitted pure train step ``(state, x, y, anneal) -> state`` (``state`` is donated).

    Cross-entropy on ``model.apply(..., train=True, anneal=anneal)``; the
    ``dropout`` rng of step ``t`` is ``fold_in(key, t)``; ``project`` (e.g.
    :func:`clip_latent_weights`) is applied to the parameters after each update.
    """

    def step(state, x, y, anneal):
        model_state = state["model_state"]
        mutable = list(model_state)
        rng = jax.random.fold_in(key, state["step"])

        def loss_fn(params):
            out = model.apply(
                {"params": params, **model_state},
                x,
                train=True,
                anneal=anneal,
                mutable=mutable if mutable else False,
                rngs={"dropout": rng},
            )
            logits, new_model_state = out if mutable else (out, {})
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return loss, (logits, new_model_state)

        (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"]
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if project is not None:
            params = project(params)
        n = jnp.asarray(y.shape[0], jnp.float32)
        correct = jnp.sum(jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
        acc = state["acc"]
        return {
            "step": state["step"] + 1,
            "params": params,
            "model_state": dict(new_model_state),
            "opt_state": opt_state,
            "acc": {
                "loss": acc["loss"] + loss.astype(jnp.float32) * n,
                "correct": acc["correct"] + correct,
                "count": acc["count"] + n,
            },
        }

    return jax.jit(step, donate_argnums=0)


# ----------------------------------------------------------------------------- evaluation


def _to_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) / np.float32(255.0) if x.dtype == np.uint8 else x.astype(np.float32)


def _accuracy(predict: Callable, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    n = images.shape[0]
    if n == 0 or labels.shape != (n,):
        raise ValueError(
            f"need N > 0 images and (N,) labels, got {images.shape} and {labels.shape}"
        )
    batch_size = min(batch_size, n)
    correct = 0
    for start in range(0, n, batch_size):
        x = _to_float(images[start : start + batch_size])
        m = x.shape[0]
        if m < batch_size:  # pad so every call has one shape (no retracing)
            x = np.concatenate([x, np.zeros((batch_size - m, *x.shape[1:]), x.dtype)])
        pred = np.asarray(predict(x))[:m]
        correct += int(np.sum(pred == labels[start : start + m]))
    return correct / n


def evaluate_clean(
    logits_fn: Callable[[jax.Array], jax.Array],
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int = 500,
) -> float:
    """Clean top-1 accuracy of ``logits_fn`` (compiled once; the last batch is padded).

    Args:
        logits_fn: ``x (B, H, W, C) in [0, 1] -> logits (B, d)``.
        images: ``uint8`` (scaled by 1/255) or float ``[0, 1]`` images ``(N, H, W, C)``.
        labels: ``(N,)`` integer labels.
        batch_size: evaluation batch size.

    Example:
        >>> x = np.zeros((5, 2, 2, 1), np.float32); y = np.array([1, 1, 0, 1, 1])
        >>> evaluate_clean(lambda x: jnp.tile(jnp.array([[0.0, 1.0]]), (x.shape[0], 1)), x, y,
        ...                batch_size=2)
        0.8
    """
    _positive_int("batch_size", batch_size)
    predict = jax.jit(lambda x: jnp.argmax(logits_fn(x), axis=-1))
    return _accuracy(predict, images, labels, batch_size)


# ----------------------------------------------------------------------------- training loop


def _metadata(config: TrainConfig, policy: QuantPolicy, *, epoch: int, clean_accuracy) -> dict:
    info = get_dataset_info(config.dataset)
    return {
        "format": 1,
        "qadv_version": _qadv_version(),
        "arch": config.arch,
        "arch_opts": dict(config.arch_opts),
        "policy": policy.to_dict(),
        "policy_name": policy.name,
        "dataset": config.dataset,
        "mean": list(info.mean),
        "std": list(info.std),
        "num_classes": info.num_classes,
        "image_shape": list(info.image_shape),
        "clean_accuracy": clean_accuracy,
        "epoch": epoch,
        "config": config.to_dict(),
    }


def _check_resumable(stored: Mapping[str, Any], config: TrainConfig, out_dir: Path) -> None:
    current = config.to_dict()
    for name, value in current.items():
        if name in _RESUMABLE_CHANGES or stored.get(name) == value:
            continue
        raise ValueError(
            f"{out_dir} holds a run with {name}={stored.get(name)!r}, but this config has "
            f"{name}={value!r}; use another out_dir or the same config"
        )


def _remove_incomplete_steps(ckpt_dir: Path) -> None:
    """Deletes step folders that no finished orbax save produced (no commit marker)."""
    if not ckpt_dir.is_dir():
        return
    done = set(complete_steps(ckpt_dir))
    for p in ckpt_dir.iterdir():
        if p.name.isdigit() and p.is_dir() and int(p.name) not in done:
            shutil.rmtree(p)


def _truncate_metrics(path: Path, step: int) -> None:
    """Keeps only metric lines up to ``step`` (lines after the restored checkpoint are redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in keep))


def _split_train(state) -> tuple[dict, dict]:
    variables = {"params": state["params"], **state["model_state"]}
    extra = {
        "step": state["step"],
        "opt_state": jax.tree.leaves(state["opt_state"]),
        "acc": state["acc"],
    }
    return variables, extra


def _load_data(config: TrainConfig, data_dir):
    train_x, train_y = load_split(config.dataset, "train", data_dir=data_dir, source=config.source)
    test_x, test_y = load_split(config.dataset, "test", data_dir=data_dir, source=config.source)
    if config.train_examples is not None:
        train_x, train_y = train_x[: config.train_examples], train_y[: config.train_examples]
    if config.test_examples is not None:
        test_x, test_y = test_x[: config.test_examples], test_y[: config.test_examples]
    return train_x, train_y, test_x, test_y


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Trains (or resumes) a run and returns its summary.

    Args:
        config: what to train.
        out_dir: run folder; if it holds checkpoints, training resumes from the
            latest finished one (the config must match, except ``epochs`` and
            checkpoint/eval settings).
        data_dir: IDX folder or tfds data dir (see :func:`qadv.data.load_split`).
        progress: show a tqdm progress bar.

    Returns:
        Summary dict (``clean_accuracy``, ``train_loss``, ``train_accuracy``,
        ``steps``, ``epochs``, ``wall_time_s``, ``resumed_from_step``, ...),
        also written to ``out_dir/summary.json``.
    """
    t_start = time.time()
    out_dir = Path(out_dir).expanduser().absolute()
    ckpt_dir = out_dir / CHECKPOINT_SUBDIR
    info = get_dataset_info(config.dataset)
    policy = make_policy(config)
    model = make_model(config)
    input_shape = (1, *info.image_shape)

    # refuse a mismatched resume before loading data or compiling anything
    stored_meta = None
    if complete_steps(ckpt_dir):
        stored_meta = read_metadata(ckpt_dir)
        _check_resumable(stored_meta.get("config", {}), config, out_dir)

    train_x, train_y, test_x, test_y = _load_data(config, data_dir)
    if train_x.shape[1:] != info.image_shape:
        raise ValueError(
            f"training images have shape {train_x.shape[1:]}, expected {info.image_shape}"
        )
    steps_per_epoch = num_batches(train_x.shape[0], config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {train_x.shape[0]} training examples"
        )
    total_steps = config.epochs * steps_per_epoch
    tx = make_optimizer(config, steps_per_epoch)
    schedule = make_schedule(config, steps_per_epoch)
    root_key = jax.random.key(config.seed)
    state = init_train_state(
        model, tx, key=jax.random.fold_in(root_key, 0), input_shape=input_shape
    )
    train_step = make_train_step(
        model,
        tx,
        key=jax.random.fold_in(root_key, 1),
        project=binary_connect_projection(policy),
    )
    predict = jax.jit(lambda v, x: jnp.argmax(model.apply(v, x, train=False), axis=-1))

    def test_accuracy(state) -> float:
        variables = {"params": state["params"], **state["model_state"]}
        return _accuracy(lambda x: predict(variables, x), test_x, test_y, config.eval_batch_size)

    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_incomplete_steps(ckpt_dir)
    manager = open_manager(ckpt_dir, max_to_keep=config.max_to_keep)
    metrics_path = out_dir / "metrics.jsonl"
    resumed_from = None
    clean_accuracy = None
    if stored_meta is not None:
        resumed_from = int(stored_meta["step"])
        abstract_vars, abstract_extra = jax.eval_shape(lambda s: _split_train(s), state)
        try:
            variables, extra, meta = restore_checkpoint(
                manager,
                resumed_from,
                arch=config.arch,
                abstract_vars=abstract_vars,
                abstract_train=abstract_extra,
            )
        except ValueError as e:
            manager.close()
            raise ValueError(
                f"{e}; delete {ckpt_dir / str(resumed_from)} to resume from an earlier checkpoint"
            ) from None
        variables = dict(variables)
        treedef = jax.tree.structure(state["opt_state"])
        state = {
            "step": jnp.asarray(extra["step"], jnp.int32),
            "params": variables.pop("params"),
            "model_state": variables,
            "opt_state": jax.tree.unflatten(treedef, list(extra["opt_state"])),
            "acc": extra["acc"],
        }
        clean_accuracy = meta.get("clean_accuracy")
        _truncate_metrics(metrics_path, resumed_from)
    step = int(state["step"])
    last_saved = resumed_from

    def save(epoch_done: int) -> None:
        nonlocal last_saved
        variables, extra = _split_train(state)
        meta = _metadata(config, policy, epoch=epoch_done, clean_accuracy=clean_accuracy)
        save_checkpoint(manager, step, variables=variables, train_state=extra, metadata=meta)
        last_saved = step

    try:
        epoch = step // steps_per_epoch
        while epoch < config.epochs:
            start_batch = step - epoch * steps_per_epoch
            if start_batch == 0:
                state = {**state, "acc": _zero_accumulators()}
            total_steps = config.epochs * steps_per_epoch
            t_epoch = time.time()
            batches: Iterator = iterate_batches(
                train_x,
                train_y,
                batch_size=config.batch_size,
                seed=config.seed,
                epoch=epoch,
                augment=config.use_augment,
                start=start_batch,
            )
            bar = tqdm(
                batches,
                total=steps_per_epoch,
                initial=start_batch,
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=not progress,
                leave=False,
                dynamic_ncols=True,
            )
            for x, y in bar:
                anneal = anneal_value(config, epoch, step=step, total_steps=total_steps)
                state = train_step(state, x, y, jnp.asarray(anneal, jnp.float32))
                step += 1
                if progress and step % 20 == 0:
                    acc = state["acc"]
                    bar.set_postfix(loss=f"{float(acc['loss'] / acc['count']):.4f}")
                every = config.checkpoint_every_steps
                if every and step % every == 0 and step % steps_per_epoch != 0:
                    save(epoch)
            bar.close()
            state = jax.block_until_ready(state)
            train_time = time.time() - t_epoch
            t_eval = time.time()
            clean_accuracy = test_accuracy(state)
            acc = jax.device_get(state["acc"])
            count = max(float(acc["count"]), 1.0)
            record = {
                "epoch": epoch + 1,
                "step": step,
                "train_loss": float(acc["loss"]) / count,
                "train_acc": float(acc["correct"]) / count,
                "test_acc": clean_accuracy,
                "lr": float(schedule(step - 1)),
                "anneal": anneal,
                "wall_time_s": train_time,
                "eval_time_s": time.time() - t_eval,
                "resumed": start_batch > 0,
            }
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}/{config.epochs}: loss {record['train_loss']:.4f} "
                    f"train acc {record['train_acc']:.4f} test acc {clean_accuracy:.4f} "
                    f"({train_time:.1f}s)"
                )
            epoch += 1
            if epoch % config.checkpoint_every_epochs == 0 or epoch == config.epochs:
                save(epoch)
        if clean_accuracy is None:
            clean_accuracy = test_accuracy(state)
        if last_saved != step:
            save(step // steps_per_epoch)
    finally:
        manager.close()

    summary_path = out_dir / "summary.json"
    wall_time = time.time() - t_start
    if resumed_from is not None and resumed_from == step and summary_path.exists():
        # a finished run invoked again trained nothing: keep its recorded training time
        wall_time = json.loads(summary_path.read_text()).get("wall_time_s", wall_time)
    acc = jax.device_get(state["acc"])
    count = max(float(acc["count"]), 1.0)
    summary = {
        "clean_accuracy": clean_accuracy,
        "train_loss": float(acc["loss"]) / count,
        "train_accuracy": float(acc["correct"]) / count,
        "epochs": config.epochs,
        "steps": step,
        "total_steps": total_steps,
        "steps_per_epoch": steps_per_epoch,
        "resumed_from_step": resumed_from,
        "checkpoint_step": last_saved,
        "wall_time_s": wall_time,
        "arch": config.arch,
        "policy": policy.name,
        "dataset": config.dataset,
        "out_dir": str(out_dir),
        "qadv_version": _qadv_version(),
        "config": config.to_dict(),
        "environment": report.environment(),
    }
    text = json.dumps(summary, indent=2) + "\n"
    summary_path.write_text(text)
    return json.loads(text)
