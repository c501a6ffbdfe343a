"""Orbax checkpoints of qadv training runs, and loading a trained model from its run folder.

A run folder (``out_dir`` of :func:`qadv.training.train`) holds::

    out_dir/checkpoints/<step>/variables   model variables (params, batch_stats)
    out_dir/checkpoints/<step>/train       optimizer state, step, epoch accumulators
    out_dir/checkpoints/<step>/metadata    JSON: arch, policy, dataset, mean/std, ...
    out_dir/metrics.jsonl, out_dir/summary.json

Atomicity: orbax writes each step into ``<step>.orbax-checkpoint-tmp-*``, writes
``commit_success.txt`` into it and then renames it to ``<step>``. A process killed
during a save therefore leaves only a temporary folder, which is ignored, and the
previous step stays the latest usable one. Step folders without
``commit_success.txt`` (not written by a finished orbax save) are ignored too.

Integrity: once orbax has finished a step, :func:`save_checkpoint` writes
``<step>/checksums.json``, the size and SHA-256 of every file in the step. A restore
checks the files of the items it reads against it before orbax opens them, so a
finished step whose files were later damaged (truncated, overwritten, removed) raises
a one-line ``ValueError`` naming the file. Steps without ``checksums.json`` (a kill
between orbax's commit and its write, or older qadv) are restored by orbax alone,
which refuses most damage with the same ``ValueError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from qadv.models import (
    check_compute_dtype,
    get_model,
    init_variables,
    make_logits_fn,
    with_compute_dtype,
)
from qadv.quant import QuantPolicy
from qadv.records import atomic_write_json

__all__ = [
    "CHECKPOINT_SUBDIR",
    "VARIABLE_COLLECTIONS",
    "LoadedModel",
    "abstract_variables",
    "build_model",
    "checkpoint_dir",
    "complete_steps",
    "load_checkpoint",
    "open_manager",
    "read_metadata",
    "restore_checkpoint",
    "save_checkpoint",
    "variable_shapes",
]

CHECKPOINT_SUBDIR = "checkpoints"
# Collections stored as model variables; others (e.g. the "quantized" tensors that
# layers sow) are diagnostics and never saved.
VARIABLE_COLLECTIONS = ("params", "batch_stats")
_COMMIT_FILE = "commit_success.txt"
_CHECKSUM_FILE = "checksums.json"
_ITEMS = ("variables", "train", "metadata")


@contextlib.contextmanager
def _quiet_orbax():
    """Raises the absl logger (orbax's) to ERROR for the duration of a save/restore."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def json_tuples(value: Any) -> Any:
    """Turns lists into tuples, recursively (options come back from JSON as lists)."""
    if isinstance(value, list | tuple):
        return tuple(json_tuples(v) for v in value)
    if isinstance(value, Mapping):
        return {k: json_tuples(v) for k, v in value.items()}
    return value


def checkpoint_dir(path: str | Path) -> Path:
    """Resolves a run folder, its ``checkpoints`` folder or a step folder to ``checkpoints``.

    Example:
        >>> import tempfile
        >>> run = Path(tempfile.mkdtemp()); (run / "checkpoints").mkdir()
        >>> checkpoint_dir(run) == run / "checkpoints"
        True
    """
    path = Path(path).expanduser().absolute()
    if (path / CHECKPOINT_SUBDIR).is_dir():
        return path / CHECKPOINT_SUBDIR
    if path.name.isdigit() and path.is_dir() and path.parent.name == CHECKPOINT_SUBDIR:
        return path.parent
    if path.is_dir() and path.name == CHECKPOINT_SUBDIR:
        return path
    raise ValueError(
        f"no checkpoint at {path}: expected a run folder with a '{CHECKPOINT_SUBDIR}' folder"
    )


def complete_steps(ckpt_dir: str | Path) -> list[int]:
    """Steps whose folders are finished orbax saves (have the commit marker), ascending.

    Example:
        >>> import tempfile
        >>> complete_steps(tempfile.mkdtemp())
        []
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in ckpt_dir.iterdir()
        if p.name.isdigit() and p.is_dir() and (p / _COMMIT_FILE).is_file()
    )


def open_manager(
    ckpt_dir: str | Path, *, max_to_keep: int | None = None, read_only: bool = False
) -> ocp.CheckpointManager:
    """Opens an orbax ``CheckpointManager`` with qadv's items (synchronous saves).

    Saves are synchronous: the train step donates its state buffers, so a save
    must be finished before the next step reuses them.
    """
    with _quiet_orbax():
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=not read_only,
            read_only=read_only,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
        )
        return ocp.CheckpointManager(Path(ckpt_dir).absolute(), options=options, item_names=_ITEMS)


def variable_shapes(variables: Any) -> dict[str, list[int]]:
    """Flat ``{"params/Dense_0/kernel": shape}`` map of a variables pytree (arrays or shapes).

    Example:
        >>> variable_shapes({"params": {"w": np.zeros((2, 3))}})
        {'params/w': [2, 3]}
    """
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): [
            int(d) for d in np.shape(leaf)
        ]
        for path, leaf in flat
    }


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    variables: Any,
    train_state: Any,
    metadata: Mapping[str, Any],
) -> None:
    """Saves one step: model variables, training state and JSON metadata.

    ``metadata`` gets ``variable_shapes`` added so that loads can name an
    architecture mismatch precisely.
    """
    metadata = {**metadata, "step": int(step), "variable_shapes": variable_shapes(variables)}
    with _quiet_orbax():
        manager.save(
            int(step),
            args=ocp.args.Composite(
                variables=ocp.args.StandardSave(variables),
                train=ocp.args.StandardSave(train_state),
                metadata=ocp.args.JsonSave(json.loads(json.dumps(metadata))),
            ),
            force=True,
        )
        manager.wait_until_finished()
    if jax.process_index() == 0:  # one writer; orbax's folders are on a shared file system
        _write_checksums(_step_dir(Path(manager.directory), int(step)))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_checksums(step_dir: Path) -> None:
    """Writes ``checksums.json`` (size and SHA-256 of each file) into a finished step."""
    files = {
        p.relative_to(step_dir).as_posix(): [p.stat().st_size, _sha256(p)]
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != _CHECKSUM_FILE
    }
    atomic_write_json(step_dir / _CHECKSUM_FILE, {"sha256": files})


def _verify_checksums(step_dir: Path, items: tuple[str, ...]) -> None:
    """Checks the saved files of ``items`` against ``checksums.json``, if the step has one.

    Raises:
        ValueError: a file is missing, or its size or contents differ from the save.
    """
    try:
        saved = json.loads((step_dir / _CHECKSUM_FILE).read_text())["sha256"]
    except FileNotFoundError:
        return  # a step saved before checksums existed, or killed before they were written
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"corrupt or truncated checkpoint {step_dir} ({_CHECKSUM_FILE}: {_one_line(e)})"
        ) from None
    for rel, (size, digest) in saved.items():
        if rel.split("/", 1)[0] not in items:
            continue
        path = step_dir / rel
        on_disk = path.stat().st_size if path.is_file() else None
        if on_disk is None:
            problem = "missing"
        elif on_disk != size:
            problem = f"{on_disk} bytes, saved {size}"
        elif _sha256(path) != digest:
            problem = "contents differ from the save"
        else:
            continue
        raise ValueError(f"corrupt or truncated checkpoint {step_dir} ({rel}: {problem})")


def _step_dir(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / str(step)


def _read_metadata_file(step_dir: Path) -> dict:
    path = step_dir / "metadata" / "metadata"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"corrupt or incomplete checkpoint {step_dir}: cannot read metadata ({_one_line(e)})"
        ) from None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise ValueError(f"corrupt checkpoint {step_dir}: metadata is not a qadv metadata record")
    return meta


def _select_step(path: str | Path, step: int | None) -> tuple[Path, int]:
    ckpt_dir = checkpoint_dir(path)
    steps = complete_steps(ckpt_dir)
    if Path(path).name.isdigit() and Path(path).parent.name == CHECKPOINT_SUBDIR and step is None:
        step = int(Path(path).name)
    if not steps:
        raise ValueError(f"no finished checkpoint in {ckpt_dir}")
    if step is None:
        return ckpt_dir, steps[-1]
    if isinstance(step, bool) or not isinstance(step, int | np.integer):
        raise ValueError(
            f"bad step {step!r}; it must be an integer, one of: " + ", ".join(map(str, steps))
        )
    if step not in steps:
        raise ValueError(
            f"no finished checkpoint for step {step} in {ckpt_dir}; available: "
            + ", ".join(map(str, steps))
        )
    return ckpt_dir, step


def read_metadata(path: str | Path, *, step: int | None = None) -> dict:
    """Reads the JSON metadata of a checkpoint (latest finished step by default).

    Args:
        path: run folder, its ``checkpoints`` folder, or a step folder.
        step: step to read; default the latest finished one.
    """
    ckpt_dir, step = _select_step(path, step)
    return _read_metadata_file(_step_dir(ckpt_dir, step))


def build_model(metadata: Mapping[str, Any]):
    """Rebuilds the Flax module described by checkpoint metadata."""
    try:
        policy = QuantPolicy(**metadata["policy"])
        return get_model(
            metadata["arch"],
            num_classes=int(metadata["num_classes"]),
            policy=policy,
            mean=tuple(metadata["mean"]),
            std=tuple(metadata["std"]),
            **{k: json_tuples(v) for k, v in metadata.get("arch_opts", {}).items()},
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"checkpoint metadata cannot describe a model ({_one_line(e)})") from None


def abstract_variables(model, image_shape) -> Any:
    """Shapes/dtypes of ``model``'s stored variables (:data:`VARIABLE_COLLECTIONS`)."""
    shape = (1, *tuple(int(d) for d in image_shape))

    def init(key):
        variables = init_variables(model, key=key, input_shape=shape)
        return {k: v for k, v in variables.items() if k in VARIABLE_COLLECTIONS}

    return jax.eval_shape(init, jax.random.key(0))


def _check_shapes(step_dir: Path, arch: str, expected: Mapping, stored: Mapping) -> None:
    if expected == stored:
        return
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    else:
        name = next(k for k in expected if expected[k] != stored[k])
        what = f"{name} has shape {tuple(stored[name])}, model needs {tuple(expected[name])}"
    raise ValueError(f"checkpoint {step_dir} does not match architecture {arch!r}: {what}")


def restore_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    *,
    arch: str,
    abstract_vars: Any,
    abstract_train: Any | None = None,
) -> tuple[Any, Any | None, dict]:
    """Restores ``(variables, train_state or None, metadata)`` of ``step``.

    Raises:
        ValueError: the checkpoint belongs to another architecture (shape or
            name mismatch), or it is corrupt/truncated.
    """
    step_dir = _step_dir(Path(manager.directory), step)
    meta = _read_metadata_file(step_dir)
    if meta.get("arch") != arch:
        raise ValueError(
            f"checkpoint {step_dir} holds architecture {meta.get('arch')!r}, not {arch!r}"
        )
    expected = variable_shapes(abstract_vars)
    stored = meta.get("variable_shapes")
    if stored is not None:
        _check_shapes(step_dir, arch, expected, stored)
    items = {"variables": ocp.args.StandardRestore(abstract_vars)}
    if abstract_train is not None:
        items["train"] = ocp.args.StandardRestore(abstract_train)
    # damaged files are refused here rather than by orbax: a read that fails inside
    # orbax leaves its other reads running against a closed event loop
    _verify_checksums(step_dir, (*items, "metadata"))
    try:
        with _quiet_orbax():
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        variables = restored["variables"]
        train_state = restored["train"] if abstract_train is not None else None
        # a restore that silently produced other shapes is corruption too
        if variable_shapes(variables) != expected:
            raise ValueError("restored shapes differ from the stored metadata")
    except Exception as e:
        raise ValueError(f"corrupt or truncated checkpoint {step_dir} ({_one_line(e)})") from None
    return variables, train_state, meta


class LoadedModel(NamedTuple):
    """A trained model restored from a run folder.

    Attributes:
        model: the Flax module (rebuilt from the metadata).
        variables: its variables (``params`` and, if any, ``batch_stats``), as stored
            (float32).
        metadata: the checkpoint metadata (arch, policy, dataset, mean/std,
            num_classes, image_shape, clean_accuracy, qadv_version, config, step).
        compute_dtype: the dtype :attr:`logits_fn` computes in, ``"float32"`` (default)
            or ``"bfloat16"`` (see :mod:`qadv.models.precision`).
    """

    model: Any
    variables: Any
    metadata: dict
    compute_dtype: str = "float32"

    @property
    def logits_fn(self) -> Callable[[jax.Array], jax.Array]:
        """Pure eval-mode logits function ``x (B,H,W,C) in [0,1] -> (B, d)`` float32.

        A ``jax.tree_util.Partial`` whose function is equal for equal models and compute
        dtypes, so that attacks compile once per model. With ``compute_dtype`` bfloat16
        the model runs in bfloat16 and its logits come back in float32.
        """
        fn = make_logits_fn(self.model, self.variables)
        return with_compute_dtype(fn, self.compute_dtype)

    def with_compute_dtype(self, dtype: Any) -> LoadedModel:
        """This model computing in ``dtype`` (one of :data:`qadv.models.COMPUTE_DTYPES`).

        Raises:
            ValueError: an unknown dtype.
        """
        return self._replace(compute_dtype=check_compute_dtype(dtype))


def load_checkpoint(
    path: str | Path, *, step: int | None = None, compute_dtype: Any = "float32"
) -> LoadedModel:
    """Loads a trained model from a run folder (``out_dir`` of :func:`qadv.training.train`).

    Args:
        path: run folder, its ``checkpoints`` folder, or one step folder.
        step: step to load; default the latest finished one.
        compute_dtype: dtype the model's logits function computes in: ``"float32"``
            (default) or ``"bfloat16"``. The stored variables stay float32 and the
            logits are float32 either way (see :mod:`qadv.models.precision`).

    Returns:
        :class:`LoadedModel` ``(model, variables, metadata, compute_dtype)``;
        ``.logits_fn`` gives the eval-mode logits function.

    Raises:
        ValueError: no checkpoint, corrupt/truncated files, variables that do not fit
            the architecture named in the metadata, or an unknown compute dtype (one
            line each).
    """
    compute_dtype = check_compute_dtype(compute_dtype)
    ckpt_dir, step = _select_step(path, step)
    meta = _read_metadata_file(_step_dir(ckpt_dir, step))
    model = build_model(meta)
    abstract = abstract_variables(model, meta["image_shape"])
    manager = open_manager(ckpt_dir, read_only=True)
    try:
        variables, _, meta = restore_checkpoint(
            manager, step, arch=meta["arch"], abstract_vars=abstract
        )
    finally:
        manager.close()
    return LoadedModel(model, variables, meta, compute_dtype)
