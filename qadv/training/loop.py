"""The training loop: :func:`train` trains (or resumes) one run folder.

::

    out_dir/checkpoints/<step>/   orbax checkpoints (see :mod:`qadv.checkpoint`)
    out_dir/metrics.jsonl         one JSON line per epoch
    out_dir/summary.json          final summary (also returned)

Determinism and resumption: the data order of epoch ``e`` is a pure function of
``(seed, e)``, augmentation of batch ``i`` of ``(seed, e, i)``, and step ``t`` draws its
dropout and attack keys from ``fold_in(key, t)``. A run killed and restarted with the
same config resumes from its last finished checkpoint (epoch end or, with
``checkpoint.every_steps``, mid-epoch) and reaches bitwise the same parameters as an
uninterrupted run, adversarial training and regularisers included.

Several devices (``devices=``, ``qadv train --shard``): every batch is sharded over a
1-D mesh of the devices and the state is replicated (:mod:`qadv.parallel`); a batch size
that does not divide by the device count is padded and masked, so training follows the
single-device run up to float rounding, and a run may resume on another device count.
Several hosts (``qadv train --distributed``): every process runs this same loop on the
same data; only process 0 writes ``metrics.jsonl`` and ``summary.json``, all of them
write the orbax checkpoints together (``out_dir`` must be on a filesystem they share).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from qadv import parallel, records
from qadv.checkpoint import (
    CHECKPOINT_SUBDIR,
    complete_steps,
    open_manager,
    read_metadata,
    restore_checkpoint,
    save_checkpoint,
)
from qadv.data import get_dataset_info, iterate_batches, load_split, num_batches, prefetch
from qadv.training.config import RESUMABLE, DataConfig, TrainConfig
from qadv.training.step import (
    TrainState,
    anneal_value,
    build_train_step,
    make_policy,
    make_schedule,
)

__all__ = ["evaluate_clean", "robust_accuracy", "train"]


def _qadv_version() -> str:
    try:
        return importlib.metadata.version("qadv")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ----------------------------------------------------------------------------- evaluation


def evaluate_clean(logits_fn, images: np.ndarray, labels: np.ndarray, *, batch_size=500) -> float:
    """Clean top-1 accuracy of ``logits_fn`` (one compiled shape; the last batch is padded).

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
    from qadv.evaluate.core import clean_predictions

    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"invalid batch_size {batch_size!r}; choose a positive integer")
    n = np.shape(images)[0] if np.ndim(images) else 0
    if n == 0 or np.shape(labels) != (n,):
        raise ValueError(
            f"need N > 0 images and (N,) labels, got {np.shape(images)} and {np.shape(labels)}"
        )
    pred = clean_predictions(logits_fn, images, batch_size=min(batch_size, n))
    return float(np.mean(pred == np.asarray(labels)))


def robust_accuracy(
    logits_fn,
    images,
    labels,
    *,
    eps: float,
    steps: int,
    norm: str,
    seed: int = 0,
    batch_size: int = 500,
) -> float:
    """PGD-``steps`` accuracy (step ``2.5 eps / steps``, random start), verified by
    :func:`qadv.evaluate.evaluate_attack`: the fraction of images classified correctly
    both clean and attacked. ``images`` are ``uint8`` (scaled by 1/255) or float."""
    from qadv.attacks import registry
    from qadv.evaluate import evaluate_attack

    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255.0)
    config = registry.make("pgd", norm=norm, eps=eps, step_size=2.5 * eps / steps, steps=steps)
    record = evaluate_attack(
        logits_fn, images, labels, config, batch_size=batch_size, seed=seed, progress=False
    )
    return record["robust_accuracy"] / 100.0


# ----------------------------------------------------------------------------- run folder


def _check_resumable(stored: dict, config: TrainConfig, out_dir: Path) -> None:
    try:
        stored_flat = TrainConfig.from_dict(stored).flat_dict()
    except ValueError as e:
        raise ValueError(f"{out_dir} holds a run with an unreadable config ({e})") from None
    for name, value in config.flat_dict().items():
        if name in RESUMABLE or stored_flat.get(name) == value:
            continue
        raise ValueError(
            f"{out_dir} holds a run with {name}={stored_flat.get(name)!r}, but this config "
            f"has {name}={value!r}; use another out_dir or the same config"
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


def _load_data(d: DataConfig, data_dir):
    train_x, train_y = load_split(d.dataset, "train", data_dir=data_dir, source=d.source)
    test_x, test_y = load_split(d.dataset, "test", data_dir=data_dir, source=d.source)
    if d.train_examples is not None:
        train_x, train_y = train_x[: d.train_examples], train_y[: d.train_examples]
    if d.test_examples is not None:
        test_x, test_y = test_x[: d.test_examples], test_y[: d.test_examples]
    return train_x, train_y, test_x, test_y


class _Run:
    """One training run: its data, compiled step, state and checkpoints."""

    def __init__(self, config: TrainConfig, out_dir, data_dir, progress: bool, devices=None):
        self.t_start = time.time()
        self.config = config
        self.main = parallel.is_main_process()
        self.progress = progress and self.main
        self.mesh = None if devices is None else parallel.make_mesh(devices)
        self.out_dir = Path(out_dir).expanduser().absolute()
        self.ckpt_dir = self.out_dir / CHECKPOINT_SUBDIR
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.info = get_dataset_info(config.data.dataset)
        self.policy = make_policy(config.quant)
        # refuse a mismatched resume before loading data or compiling anything
        self.stored_meta = None
        if complete_steps(self.ckpt_dir):
            self.stored_meta = read_metadata(self.ckpt_dir)
            _check_resumable(self.stored_meta.get("config", {}), config, self.out_dir)
        self.train_x, self.train_y, self.test_x, self.test_y = _load_data(config.data, data_dir)
        if self.train_x.shape[1:] != self.info.image_shape:
            raise ValueError(
                f"training images have shape {self.train_x.shape[1:]}, "
                f"expected {self.info.image_shape}"
            )
        self.steps_per_epoch = num_batches(self.train_x.shape[0], config.optim.batch_size)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"batch_size {config.optim.batch_size} exceeds the "
                f"{self.train_x.shape[0]} training examples"
            )
        self.total_steps = config.optim.epochs * self.steps_per_epoch
        self.schedule = make_schedule(config.optim, self.steps_per_epoch)
        self.model, self.state, self.train_step = build_train_step(
            config, steps_per_epoch=self.steps_per_epoch, mesh=self.mesh
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.main:
            _remove_incomplete_steps(self.ckpt_dir)
        self.manager = open_manager(self.ckpt_dir, max_to_keep=config.checkpoint.max_to_keep)
        self.resumed_from: int | None = None
        self.last_saved: int | None = None
        self.clean_accuracy: float | None = None
        self.robust_accuracy: float | None = None
        self.recalibrated = False

    # -------------------------------------------------------------- checkpoints

    def _split(self, state: TrainState) -> tuple[dict, dict]:
        extra = {
            "step": state.step,
            "opt_state": jax.tree.leaves(state.opt_state),
            "metrics": state.metrics,
        }
        return state.variables, extra

    def resume(self) -> None:
        if self.stored_meta is None:
            # a fresh start: lines of a run killed before its first checkpoint are redone
            if self.main:
                _truncate_metrics(self.metrics_path, -1)
            return
        step = int(self.stored_meta["step"])
        abstract_vars, abstract_extra = jax.eval_shape(self._split, self.state)
        if self.mesh is not None:  # restore straight onto every device
            rep = parallel.replicated(self.mesh)
            abstract_vars, abstract_extra = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                (abstract_vars, abstract_extra),
            )
        try:
            variables, extra, meta = restore_checkpoint(
                self.manager,
                step,
                arch=self.config.model.arch,
                abstract_vars=abstract_vars,
                abstract_train=abstract_extra,
            )
        except ValueError as e:
            raise ValueError(
                f"{e}; delete {self.ckpt_dir / str(step)} to resume from an earlier checkpoint"
            ) from None
        variables = dict(variables)
        treedef = jax.tree.structure(self.state.opt_state)
        self.state = TrainState(
            step=jnp.asarray(extra["step"], jnp.int32),
            params=variables.pop("params"),
            model_state=variables,
            opt_state=jax.tree.unflatten(treedef, list(extra["opt_state"])),
            metrics=extra["metrics"],
        )
        self.resumed_from = self.last_saved = step
        self.clean_accuracy = meta.get("clean_accuracy")
        self.robust_accuracy = meta.get("robust_accuracy")
        self.recalibrated = bool(meta.get("recalibrated", False))
        if self.mesh is not None:
            self.state = parallel.replicate(self.state, self.mesh)
        if self.main:
            _truncate_metrics(self.metrics_path, step)

    def save(self, epoch_done: int) -> None:
        variables, extra = self._split(self.state)
        step = int(self.state.step)
        meta = {
            "format": 1,
            "qadv_version": _qadv_version(),
            "arch": self.config.model.arch,
            "arch_opts": dict(self.config.model.arch_opts),
            "policy": self.policy.to_dict(),
            "policy_name": self.policy.name,
            "dataset": self.config.data.dataset,
            "mean": list(self.info.mean),
            "std": list(self.info.std),
            "num_classes": self.info.num_classes,
            "image_shape": list(self.info.image_shape),
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "recalibrated": self.recalibrated,
            "epoch": epoch_done,
            "config": self.config.to_dict(),
        }
        save_checkpoint(self.manager, step, variables=variables, train_state=extra, metadata=meta)
        self.last_saved = step

    # -------------------------------------------------------------- evaluation

    def variables(self) -> dict:
        """The model variables on one device (a sharded run evaluates, identically, on
        each process's default device rather than on every device of the mesh)."""
        if self.mesh is None:
            return self.state.variables
        return jax.tree.map(lambda a: jnp.asarray(parallel.to_host(a)), self.state.variables)

    def logits_fn(self):
        from qadv.models import make_logits_fn

        return make_logits_fn(self.model, self.variables(), check_values=False)

    @property
    def robust_settings(self) -> tuple[int, float, str]:
        c = self.config
        n = c.eval.robust_examples
        if n is None:
            n = 500 if (c.adversary.enabled or c.regularizer.enabled) else 0
        eps = c.eval.robust_eps or (c.adversary.eps if c.adversary.enabled else 8 / 255)
        norm = c.adversary.norm if c.adversary.enabled else c.regularizer.norm
        return min(n, len(self.test_x)), float(eps), norm

    def evaluate(self) -> dict:
        t = time.time()
        fn = self.logits_fn()
        bs = self.config.eval.batch_size
        self.clean_accuracy = evaluate_clean(fn, self.test_x, self.test_y, batch_size=bs)
        out = {"test_acc": self.clean_accuracy}
        n, eps, norm = self.robust_settings
        if n:
            self.robust_accuracy = robust_accuracy(
                fn,
                self.test_x[:n],
                self.test_y[:n],
                eps=eps,
                steps=self.config.eval.robust_steps,
                norm=norm,
                seed=self.config.seed,
                batch_size=bs,
            )
            out.update(robust_acc=self.robust_accuracy, robust_eps=eps, robust_examples=n)
        out["eval_time_s"] = time.time() - t
        return out

    def recalibrate(self) -> float:
        """Re-estimates BatchNorm statistics of the hard-binarised network; returns the
        clean accuracy before."""
        from qadv.models import recalibrate_batch_stats

        before = evaluate_clean(
            self.logits_fn(), self.test_x, self.test_y, batch_size=self.config.eval.batch_size
        )
        variables = recalibrate_batch_stats(
            self.model, self.variables(), self.train_x, batch_size=self.config.eval.batch_size
        )
        model_state = {k: v for k, v in variables.items() if k != "params"}
        if self.mesh is not None:
            model_state = parallel.replicate(model_state, self.mesh)
        self.state = self.state.replace(model_state={**self.state.model_state, **model_state})
        self.recalibrated = True
        return before

    # -------------------------------------------------------------- loop

    def run_epoch(self, epoch: int) -> None:
        c = self.config
        step = int(self.state.step)
        start_batch = step - epoch * self.steps_per_epoch
        if start_batch == 0:
            self.state = self.state.reset_metrics()
        t_epoch = time.time()
        # the next batches are gathered, augmented and (on one device) copied to it
        # while the current step runs; a sharded step places its own batches
        batches = prefetch(
            iterate_batches(
                self.train_x,
                self.train_y,
                batch_size=c.optim.batch_size,
                seed=c.seed,
                epoch=epoch,
                augment=c.use_augment,
                start=start_batch,
            ),
            put=jax.device_put if self.mesh is None else None,
        )
        bar = tqdm(
            batches,
            total=self.steps_per_epoch,
            initial=start_batch,
            desc=f"epoch {epoch + 1}/{c.optim.epochs}",
            disable=not self.progress,
            leave=False,
            dynamic_ncols=True,
        )
        anneal = None
        for x, y in bar:
            anneal = anneal_value(c.quant, epoch, step=step, total_steps=self.total_steps)
            self.state = self.train_step(self.state, x, y, jnp.asarray(anneal, jnp.float32))
            step += 1
            if self.progress and step % 20 == 0:
                bar.set_postfix(loss=f"{self.state.summary()['loss']:.4f}")
            every = c.checkpoint.every_steps
            if every and step % every == 0 and step % self.steps_per_epoch != 0:
                self.save(epoch)
        bar.close()
        self.state = jax.block_until_ready(self.state)
        train_time = time.time() - t_epoch
        last = epoch + 1 == c.optim.epochs
        record: dict[str, Any] = {"epoch": epoch + 1, "step": step}
        if last and c.quant.use_recalibration:
            record["test_acc_before_recalibration"] = self.recalibrate()
        record.update(self.evaluate())
        m = self.state.summary()
        record.update(
            train_loss=m["loss"],
            train_acc=m["accuracy"],
            lr=float(self.schedule(step - 1)),
            anneal=anneal,
            wall_time_s=train_time,
            resumed=start_batch > 0,
        )
        if c.regularizer.enabled:
            record["train_penalty"] = m["penalty"]
        if self.main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.progress:
            robust = f" PGD acc {record['robust_acc']:.4f}" if "robust_acc" in record else ""
            tqdm.write(
                f"epoch {epoch + 1}/{c.optim.epochs}: loss {m['loss']:.4f} train acc "
                f"{m['accuracy']:.4f} test acc {self.clean_accuracy:.4f}{robust} "
                f"({train_time:.1f}s)"
            )
        if (epoch + 1) % c.checkpoint.every_epochs == 0 or last:
            self.save(epoch + 1)

    def run(self) -> None:
        epoch = int(self.state.step) // self.steps_per_epoch
        while epoch < self.config.optim.epochs:
            self.run_epoch(epoch)
            epoch += 1
        step = int(self.state.step)
        if self.clean_accuracy is None:
            self.evaluate()
        if self.last_saved != step:
            self.save(step // self.steps_per_epoch)

    def summary(self) -> dict:
        c = self.config
        summary_path = self.out_dir / "summary.json"
        step = int(self.state.step)
        wall_time = time.time() - self.t_start
        if self.resumed_from is not None and self.resumed_from == step and summary_path.exists():
            # a finished run invoked again trained nothing: keep its recorded times
            wall_time = json.loads(summary_path.read_text()).get("wall_time_s", wall_time)
        text = self.metrics_path.read_text() if self.metrics_path.exists() else ""
        lines = [json.loads(x) for x in text.splitlines() if x.strip()]
        m = self.state.summary()
        summary = {
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "robust_eps": self.robust_settings[1] if self.robust_settings[0] else None,
            "train_loss": m["loss"],
            "train_accuracy": m["accuracy"],
            "train_penalty": m["penalty"] if c.regularizer.enabled else None,
            "recalibrated": self.recalibrated,
            "epochs": c.optim.epochs,
            "steps": step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "resumed_from_step": self.resumed_from,
            "checkpoint_step": self.last_saved,
            "wall_time_s": wall_time,
            "train_time_s": sum(x.get("wall_time_s", 0.0) for x in lines),
            "arch": c.model.arch,
            "policy": self.policy.name,
            "dataset": c.data.dataset,
            "adversary": c.adversary.name,
            "regularizer": c.regularizer.igr,
            "out_dir": str(self.out_dir),
            "qadv_version": _qadv_version(),
            "config": c.to_dict(),
            "environment": records.environment(),
        }
        text = json.dumps(summary, indent=2) + "\n"
        if self.main:
            summary_path.write_text(text)
        return json.loads(text)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    progress: bool = True,
    devices: list | None = None,
) -> dict:
    """Trains (or resumes) a run and returns its summary.

    Args:
        config: what to train (:class:`TrainConfig`).
        out_dir: run folder; if it holds checkpoints, training resumes from the latest
            finished one (the config must match, except ``optim.epochs`` and the
            checkpoint and evaluation settings).
        data_dir: IDX folder or tfds data dir (see :func:`qadv.data.load_split`).
        progress: show a tqdm progress bar.
        devices: shard every batch over these devices (e.g. ``jax.devices()``: every
            host's), parameters replicated; ``None``: one device. A batch that does not
            divide by their number is padded and masked; the result is the single-device
            one up to float rounding. How a run is executed, not what it is: it is not
            part of the config, and a run may resume on another device count.

    Returns:
        Summary dict (``clean_accuracy``, ``robust_accuracy``, ``train_loss``,
        ``train_accuracy``, ``steps``, ``wall_time_s``, ``train_time_s``,
        ``resumed_from_step``, ...), also written to ``out_dir/summary.json``.
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config must be a TrainConfig, got {type(config).__name__}")
    run = _Run(config, out_dir, data_dir, progress, devices)
    try:
        run.resume()
        run.run()
    finally:
        run.manager.close()
    return run.summary()
