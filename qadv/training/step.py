"""Building blocks of the training loop: model, schedule, optimizer, annealing, the
BinaryConnect projection, the :class:`TrainState` pytree and the jitted train step."""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qadv import parallel
from qadv.checkpoint import VARIABLE_COLLECTIONS
from qadv.data import get_dataset_info
from qadv.models import get_model, init_variables
from qadv.quant import QuantPolicy
from qadv.training.config import OptimConfig, QuantConfig, TrainConfig
from qadv.training.objectives import Objective, cross_entropy, make_objective

__all__ = [
    "STATE_COLLECTIONS",
    "TrainState",
    "anneal_value",
    "binary_connect_projection",
    "build_train_step",
    "clip_latent_weights",
    "init_train_state",
    "make_model",
    "make_optimizer",
    "make_policy",
    "make_schedule",
    "make_train_step",
]

# Variable collections carried through training besides "params" (others, such as the
# "quantized" tensors the layers sow, are diagnostics and are dropped).
STATE_COLLECTIONS = tuple(c for c in VARIABLE_COLLECTIONS if c != "params")
METRICS = ("loss", "penalty", "correct", "count")


def _group(config: Any, name: str) -> Any:
    """``config`` itself, or its group ``name`` when it is a whole :class:`TrainConfig`
    (accepted for earlier callers, deprecated)."""
    if isinstance(config, TrainConfig):
        warnings.warn(
            f"pass config.{name}, not the whole TrainConfig", DeprecationWarning, stacklevel=3
        )
        return getattr(config, name)
    return config


def make_policy(quant: QuantConfig) -> QuantPolicy:
    """The :class:`qadv.quant.QuantPolicy` of a quantization group (or of a whole
    :class:`TrainConfig`)."""
    if isinstance(quant, TrainConfig):  # the whole config is as usual here: no warning
        quant = quant.quant
    return quant.make_policy()


def make_model(config: TrainConfig):
    """The Flax module of a config (normalisation constants from the dataset)."""
    info = get_dataset_info(config.data.dataset)
    return get_model(
        config.model.arch,
        num_classes=info.num_classes,
        policy=make_policy(config.quant),
        mean=info.mean,
        std=info.std,
        **config.model.arch_opts,
    )


def make_schedule(optim: OptimConfig, steps_per_epoch: int) -> optax.Schedule:
    """Learning-rate schedule over ``optim.epochs * steps_per_epoch`` steps.

    Example:
        >>> s = make_schedule(OptimConfig(epochs=4, lr=1.0, schedule="step"), 10)
        >>> [float(s(i)) for i in (0, 19, 20, 30)]
        [1.0, 1.0, 0.10000000149011612, 0.010000000707805157]
        >>> c = make_schedule(OptimConfig(epochs=1, lr=1.0, schedule="cyclic"), 10)
        >>> [round(float(c(i)), 2) for i in (0, 2, 4, 7, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """
    o = _group(optim, "optim")
    total = max(o.epochs * steps_per_epoch, 1)
    if o.schedule == "constant":
        return optax.constant_schedule(o.lr)
    if o.schedule == "cosine":
        return optax.cosine_decay_schedule(o.lr, decay_steps=total)
    if o.schedule == "cyclic":
        peak = max(round(o.cycle_peak * total), 1)
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, o.lr, peak),
                optax.linear_schedule(o.lr, 0.0, max(total - peak, 1)),
            ],
            [peak],
        )
    boundaries = {round(m * total): o.lr_gamma for m in o.lr_milestones}
    return optax.piecewise_constant_schedule(o.lr, boundaries)


def _kernel_mask(params):
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(optim: OptimConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax optimizer of an optimisation group (see :class:`OptimConfig`)."""
    o = _group(optim, "optim")
    schedule = make_schedule(o, steps_per_epoch)
    if o.optimizer == "adam":
        if o.weight_decay > 0:
            return optax.adamw(schedule, weight_decay=o.weight_decay, mask=_kernel_mask)
        return optax.adam(schedule)
    parts = []
    if o.weight_decay > 0:
        parts.append(optax.add_decayed_weights(o.weight_decay, mask=_kernel_mask))
    parts.append(optax.sgd(schedule, momentum=o.momentum or None, nesterov=o.nesterov))
    return optax.chain(*parts)


def anneal_value(quant: QuantConfig, epoch: int, *, step: int = 0, total_steps: int = 1) -> float:
    """Tanh annealing ``beta`` of (0-based) ``epoch``, or of ``step`` with ``anneal_end``.

    With ``anneal_end``, ``beta`` grows geometrically from ``anneal_start`` to
    ``anneal_end`` over the first ``1 - hard_fraction`` of the steps; the rest train hard
    signs (``beta = inf``).

    Example:
        >>> anneal_value(QuantConfig(anneal_start=1.0, anneal_growth=2.0), 3)
        8.0
        >>> q = QuantConfig(policy="bnn_wq", wq_method="md_tanh_s", anneal_end=100.0,
        ...                 hard_fraction=0.5)
        >>> [anneal_value(q, 0, step=s, total_steps=10) for s in (0, 4, 5)]
        [1.0, 100.0, inf]
    """
    q = _group(quant, "quant")
    if q.anneal_end is not None:
        soft_steps = total_steps - math.floor(q.resolved_hard_fraction * total_steps)
        if step >= soft_steps:
            return math.inf
        frac = min(step / max(soft_steps - 1, 1), 1.0)
        return float(q.anneal_start * (q.anneal_end / q.anneal_start) ** frac)
    beta = q.anneal_start * q.anneal_growth**epoch
    return float(min(beta, q.anneal_max) if q.anneal_max is not None else beta)


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
    """The post-update projection of ``policy``: BinaryConnect clipping of its
    :attr:`~qadv.quant.QuantPolicy.clipped_params`, or ``None``.

    With ``wq_method="bc"``, ``bnn_wq`` clips kernels and (unless ``float_bias``)
    biases, which it binarises too; ``bnn_waq`` clips kernels. Other policies
    and methods need no projection.

    Example:
        >>> from qadv.quant import get_policy
        >>> binary_connect_projection(get_policy("bnn_wq", wq_method="md_tanh_s")) is None
        True
    """
    names = policy.clipped_params
    if not names:
        return None
    return functools.partial(clip_latent_weights, names=names)


class TrainState(flax.struct.PyTreeNode):
    """Everything a train step carries (a pytree; checkpointed whole).

    Attributes:
        step: int32 scalar, steps taken.
        params: trainable parameters.
        model_state: non-parameter collections (``batch_stats``).
        opt_state: optax state.
        metrics: running sums of the current epoch: ``loss`` (objective), ``penalty``
            (regulariser), ``correct`` (on the trained-on inputs), ``count``.
    """

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any
    metrics: Any

    @property
    def variables(self) -> dict:
        """``{"params": ..., **model_state}`` for ``model.apply``."""
        return {"params": self.params, **self.model_state}

    def reset_metrics(self) -> TrainState:
        return self.replace(metrics=zero_metrics())

    def summary(self) -> dict[str, float]:
        """Epoch means of the running metrics (host floats)."""
        m = jax.device_get(self.metrics)
        count = max(float(m["count"]), 1.0)
        return {
            "loss": float(m["loss"]) / count,
            "penalty": float(m["penalty"]) / count,
            "accuracy": float(m["correct"]) / count,
        }


def zero_metrics() -> dict:
    return {k: jnp.zeros((), jnp.float32) for k in METRICS}


def init_train_state(
    model, tx: optax.GradientTransformation, *, key: jax.Array, input_shape
) -> TrainState:
    """Initial :class:`TrainState` (step 0, fresh parameters and optimizer state)."""
    variables = init_variables(model, key=key, input_shape=tuple(input_shape))
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state={k: v for k, v in variables.items() if k in STATE_COLLECTIONS},
        opt_state=tx.init(params),
        metrics=zero_metrics(),
    )


def _forward_fn(model, state: TrainState, anneal, k_drop: jax.Array, mask) -> Callable:
    """``forward(params, z) -> (logits, new model state)`` of the network in training mode
    (batch statistics over the real rows of ``mask``; no gradient out of padding rows)."""
    mutable = list(state.model_state)
    real = None if mask is None else mask > 0

    def forward(params, z):
        with parallel.masked_batch_norm(real):
            out = model.apply(
                {"params": params, **state.model_state},
                z,
                train=True,
                anneal=anneal,
                mutable=mutable if mutable else False,
                rngs={"dropout": k_drop},
            )
        logits, new_model_state = out if mutable else (out, {})
        return parallel.detach_padding(logits, real), new_model_state

    return forward


def _masked_mean(v: jax.Array, mask) -> jax.Array:
    return v.mean() if mask is None else jnp.sum(v * mask) / jnp.sum(mask)


def _loss_fn(forward: Callable, objective: Objective, x_train, y, mask) -> Callable:
    """``loss_fn(params) -> (loss, (logits, new model state, penalty))``: the mean
    cross-entropy at ``x_train`` plus ``lam/2`` times the mean penalty, which shares the
    forward pass."""

    def loss_fn(params):
        def per_example(z):
            logits, new_model_state = forward(params, z)
            return cross_entropy(logits, y), (logits, new_model_state)

        penalty = jnp.zeros((), jnp.float32)
        if objective.penalty is None:
            losses, (logits, new_model_state) = per_example(x_train)
            loss = _masked_mean(losses, mask)
        else:  # the regulariser shares the forward pass at x_train
            pen, losses, (logits, new_model_state) = objective.penalty(per_example, x_train)
            penalty = _masked_mean(pen, mask)
            loss = _masked_mean(losses, mask) + 0.5 * objective.lam * penalty
        return loss, (logits, new_model_state, penalty)

    return loss_fn


def _add_metrics(metrics: dict, logits, y, mask, loss, penalty) -> dict:
    """The running metrics with one batch added (its real rows only)."""
    hits = jnp.argmax(logits, axis=-1) == y
    if mask is None:
        n = jnp.asarray(y.shape[0], jnp.float32)
        correct = jnp.sum(hits).astype(jnp.float32)
    else:
        n = jnp.sum(mask).astype(jnp.float32)
        correct = jnp.sum(jnp.where(mask > 0, hits, False)).astype(jnp.float32)
    return {
        "loss": metrics["loss"] + loss.astype(jnp.float32) * n,
        "penalty": metrics["penalty"] + penalty.astype(jnp.float32) * n,
        "correct": metrics["correct"] + correct,
        "count": metrics["count"] + n,
    }


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    *,
    key: jax.Array,
    project: Callable[[Any], Any] | None = None,
    objective: Objective | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable:
    """Jitted pure train step ``(state, x, y, anneal[, mask]) -> state`` (``state`` is donated).

    The objective (default: clean cross-entropy) decides what is trained on and how:
    ``x_train = objective.perturb(logits_fn, x, y, key)`` (adversarial training; the
    attacked network runs in training mode on the batch's own statistics, without
    updating them), then ``mean CE(x_train) + lam/2 * mean penalty(loss_fn, x_train)``.
    Step ``t`` draws its dropout and attack keys from ``fold_in(key, t)`` (the attack's
    per-example keys from the example's row, ``fold_in(k, i)``); ``project`` (e.g.
    :func:`clip_latent_weights`) is applied to the parameters after each update.

    ``mask`` (float ``(B,)``, 1 on real rows, 0 on padding rows appended after them)
    trains on the real rows only: losses, penalties and metrics are masked means and
    counts, BatchNorm takes its batch statistics over the real rows
    (:func:`qadv.parallel.masked_batch_norm`), and no gradient (of the parameters, of
    the attack, of the regulariser) flows out of a padding row
    (:func:`qadv.parallel.detach_padding`). A padded batch thus trains like the unpadded
    one, up to float rounding. Without ``mask`` the step is the unmasked one, unchanged.
    (qadv's models have no dropout; a model with dropout would draw other dropout masks
    for a padded batch, whose shape differs.)

    With ``mesh`` (:func:`qadv.parallel.make_mesh`), the step is data parallel: it takes
    a host batch of any size, pads it to a multiple of the device count, shards
    ``x``, ``y`` and the mask over the mesh's ``"batch"`` axis and keeps the state
    replicated (``in_shardings``/``out_shardings``); the returned function has the same
    signature and gives the single-device result up to float rounding.

    Example:
        >>> import numpy as np
        >>> from qadv import parallel
        >>> model, state, _ = build_train_step(TrainConfig(arch="mlp"), steps_per_epoch=1)
        >>> tx = make_optimizer(OptimConfig(), 1)
        >>> step = make_train_step(model, tx, key=jax.random.key(0),
        ...                        mesh=parallel.make_mesh(jax.devices()[:1]))
        >>> x, y = np.zeros((3, 28, 28, 1), np.float32), np.zeros(3, np.int32)
        >>> int(step(state, x, y, 1.0).metrics["count"])
        3
    """
    objective = objective or Objective()

    def step(state: TrainState, x, y, anneal, mask=None):
        k_drop = jax.random.fold_in(key, state.step)
        k_adv = jax.random.fold_in(k_drop, 1)
        forward = _forward_fn(model, state, anneal, k_drop, mask)
        x_train = x
        if objective.perturb is not None:
            frozen = jax.lax.stop_gradient(state.params)
            masked = {} if mask is None else {"mask": mask}
            x_train = objective.perturb(lambda z: forward(frozen, z)[0], x, y, k_adv, **masked)
        loss_fn = _loss_fn(forward, objective, x_train, y, mask)
        (loss, (logits, new_model_state, penalty)), grads = jax.value_and_grad(
            loss_fn, has_aux=True
        )(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if project is not None:
            params = project(params)
        return TrainState(
            step=state.step + 1,
            params=params,
            model_state=dict(new_model_state),
            opt_state=opt_state,
            metrics=_add_metrics(state.metrics, logits, y, mask, loss, penalty),
        )

    if mesh is None:
        return jax.jit(step, donate_argnums=0)
    return _sharded(step, mesh)


def _sharded(step: Callable, mesh: jax.sharding.Mesh) -> Callable:
    """``step`` jitted over ``mesh`` (state replicated, batch sharded), behind a host-side
    wrapper that pads the batch to a multiple of the device count and places it."""
    rep, rows = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    jitted = jax.jit(
        step,
        in_shardings=(rep, rows, rows, rep, rows),
        out_shardings=rep,
        donate_argnums=0,
    )

    def sharded_step(state: TrainState, x, y, anneal, mask=None) -> TrainState:
        x, y = parallel.to_host(x), parallel.to_host(y)
        mask = np.ones(x.shape[0], np.float32) if mask is None else parallel.to_host(mask)
        (x, pad), (y, _), (mask, _) = (parallel.pad_to_multiple(a, mesh.size) for a in (x, y, mask))
        mask = (mask * pad).astype(np.float32)
        anneal = np.asarray(parallel.to_host(anneal), np.float32)
        return jitted(
            parallel.replicate(state, mesh),
            parallel.place(x, rows),
            parallel.place(y, rows),
            parallel.place(anneal, rep),
            parallel.place(mask, rows),
        )

    return sharded_step


def build_train_step(
    config: TrainConfig, *, steps_per_epoch: int, mesh: jax.sharding.Mesh | None = None
):
    """``(model, initial TrainState, jitted step)`` of a config, exactly as :func:`train`
    builds them: parameters from ``fold_in(key(seed), 0)``, step keys from
    ``fold_in(key(seed), 1)``, the config's optimizer over ``steps_per_epoch`` steps per
    epoch, its BinaryConnect projection and its objective (adversary, regulariser).
    With ``mesh``, the step is data parallel over it and the state is replicated on it
    (see :func:`make_train_step`).

    Example:
        >>> model, state, step = build_train_step(TrainConfig(arch="mlp"), steps_per_epoch=1)
        >>> int(state.step)
        0
    """
    info = get_dataset_info(config.data.dataset)
    model = make_model(config)
    tx = make_optimizer(config.optim, steps_per_epoch)
    root = jax.random.key(config.seed)
    state = init_train_state(
        model, tx, key=jax.random.fold_in(root, 0), input_shape=(1, *info.image_shape)
    )
    step = make_train_step(
        model,
        tx,
        key=jax.random.fold_in(root, 1),
        project=binary_connect_projection(make_policy(config.quant)),
        objective=make_objective(config.adversary, config.regularizer),
        mesh=mesh,
    )
    if mesh is not None:
        state = parallel.replicate(state, mesh)
    return model, state, step
