"""Options and helpers shared by the ``qadv`` commands: argument types that give one-line
errors (the parsers of :mod:`qadv.validation`), the common flags (data folder, progress,
dtype, devices, run options), and loading a checkpoint with its test images."""

from __future__ import annotations

import argparse

import numpy as np

from qadv.validation import parse_fraction, parse_int

__all__ = [
    "Parser",
    "add_common",
    "add_data_dir",
    "add_dtype",
    "add_parallel",
    "add_progress",
    "add_run_options",
    "devices",
    "fraction",
    "integer",
    "load",
    "positive_int",
    "run_options",
    "split_list",
]


class Parser(argparse.ArgumentParser):
    """Reports a bad command line as one line on stderr (exit status 2), like every other
    user error, instead of the usage text followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _argument_type(parse_value, **kw):
    """An argparse type calling ``parse_value(text, **kw)``; its one-line ``ValueError``
    becomes argparse's error."""

    def parse(text: str):
        try:
            return parse_value(text, **kw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def fraction(name: str):
    """Argument type: a finite number or a fraction such as ``8/255``."""
    return _argument_type(parse_fraction, name=name)


def positive_int(name: str):
    """Argument type: an integer >= 1."""
    return _argument_type(parse_int, name=name, minimum=1)


def integer(name: str):
    """Argument type: any integer (the range is checked by whoever takes it)."""
    return _argument_type(parse_int, name=name)


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [item.strip() for item in text.split(",") if item.strip()]


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four IDX files of (Fashion-)MNIST, or a tfds data_dir "
        "(default: /usr/share/datasets/fashion-mnist, then tfds)",
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_dtype(p: argparse.ArgumentParser) -> None:
    from qadv.models.precision import COMPUTE_DTYPES

    p.add_argument(
        "--dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="model compute dtype; bfloat16 is faster on GPU/TPU, its logits and the "
        "attack's arithmetic stay float32 (default float32)",
    )


def add_parallel(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        action="store_true",
        help="shard each batch over all devices (GPUs/TPU cores); params replicated",
    )
    p.add_argument(
        "--distributed",
        action="store_true",
        help="multi-host: join JAX's distributed system first (TPU pod, SLURM, Open MPI), "
        "then shard over every host's devices; start the same command on every host",
    )


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of a batched attack run (``attack``, ``evaluate``)."""
    p.add_argument(
        "--surrogate", default=None, help="run folder of a surrogate model (transfer attacks)"
    )
    p.add_argument("--seed", type=int, default=0, help="example i uses fold_in(key(seed), i)")
    p.add_argument("--n", type=positive_int("n"), default=None, help="first N test images")
    p.add_argument("--batch-size", type=positive_int("batch size"), default=250)
    add_dtype(p)
    add_parallel(p)
    add_data_dir(p)
    add_progress(p)


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every command takes: the precision policy and the compilation cache."""
    from qadv.precision import PRECISIONS

    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="float32 matmul/conv precision (default float32, also on GPUs/TPUs whose "
        "own default is lower; env QADV_PRECISION); tensorfloat32 and bfloat16 are "
        "faster and less exact",
    )
    p.add_argument(
        "--no-compile-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (default: "
        "$QADV_CACHE_DIR or ~/.cache/qadv/jax; env QADV_COMPILE_CACHE=0 also turns it off)",
    )


def devices(args) -> list | None:
    """Every device (all hosts' after ``--distributed``) with ``--shard`` or
    ``--distributed``, else ``None`` (one device)."""
    if not (args.shard or args.distributed):
        return None
    import jax

    return jax.devices()


def load(
    checkpoint: str,
    data_dir: str | None,
    n: int | None,
    devices: list | None = None,
    dtype: str = "float32",
):
    """``(loaded model, images, labels)``: the checkpoint (its weights on every device of
    ``devices``) and the first ``n`` images of its dataset's test split, float32 in [0, 1]."""
    from qadv import data
    from qadv.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint, compute_dtype=dtype)
    if devices is not None and len(devices) > 1:
        from qadv import parallel  # the weights on every device of the mesh

        mesh = parallel.make_mesh(devices)
        loaded = loaded._replace(variables=parallel.replicate(loaded.variables, mesh))
    images, labels = data.load_split(loaded.metadata["dataset"], "test", data_dir=data_dir)
    if n is not None:
        images, labels = images[:n], labels[:n]
    return loaded, images.astype(np.float32) / np.float32(255.0), labels


def run_options(args, loaded, images) -> dict:
    """Keyword arguments shared by ``evaluate_attack`` and ``evaluate_ensemble``."""
    from qadv.attacks import AttackContext
    from qadv.checkpoint import load_checkpoint

    surrogate = None
    if args.surrogate is not None:
        surrogate = load_checkpoint(args.surrogate, compute_dtype=args.dtype).logits_fn
    context = AttackContext(
        calib_images=images, input_std=tuple(loaded.metadata["std"]), surrogate=surrogate
    )
    return dict(
        batch_size=min(args.batch_size, len(images)),
        seed=args.seed,
        context=context,
        out=args.out,
        progress=not args.no_progress,
        extra={
            "checkpoint": str(args.checkpoint),
            "model": loaded.metadata,
            "compute_dtype": loaded.compute_dtype,
        },
        devices=devices(args),
    )
