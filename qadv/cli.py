"""The ``qadv`` command line: train, info, eval, attack, evaluate, attacks, diagnose,
table, masking, demo, study, signal, verify.

Every user error (unknown names, bad numbers, missing data or checkpoints) is
reported as one line on stderr, with exit status 2 and no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

__all__ = ["main"]


def _fraction(name: str):
    def parse(text: str) -> float:
        from qadv.report import parse_fraction

        try:
            return parse_fraction(text, name=name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _positive_int(name: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad {name} {text!r}; use an integer >= 1") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"bad {name} {text!r}; use an integer >= 1")
        return value

    return parse


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        default=None,
        help="folder with the four IDX files of (Fashion-)MNIST, or a tfds data_dir "
        "(default: /usr/share/datasets/fashion-mnist, then tfds)",
    )


def _add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _option_parser(annotation: str, name: str):
    """Parse an attack option from its dataclass annotation (fractions like 8/255 ok)."""
    if "float" in annotation:
        return _fraction(name)
    if annotation.strip() == "int":

        def parse_int(text: str) -> int:
            try:
                return int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"bad {name} {text!r}; use an integer") from None

        return parse_int
    return str


def _attack_options() -> dict[str, tuple[str, object, str]]:
    """Every option of every registered attack and temperature:
    name -> (annotation, default, the attacks/temperatures that have it)."""
    from qadv.attacks import registry

    opts: dict[str, tuple[str, object, list[str]]] = {}
    owners = [(n, registry._lookup(n)[0]) for n in registry.attack_names()]
    owners += [(t, registry._TEMPERATURES[t]) for t in registry.temperature_names()]
    for owner, cls in owners:
        for f in dataclasses.fields(cls):
            if f.name in ("norm", "eps", "temperature", "source"):
                continue
            opts.setdefault(f.name, (str(f.type), f.default, []))[2].append(owner)
    return {k: (a, d, ", ".join(o)) for k, (a, d, o) in opts.items()}


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    """The threat model plus one flag per registered attack/temperature option."""
    p.add_argument("--norm", default="linf", help="linf or l2")
    p.add_argument("--eps", type=_fraction("eps"), default=8 / 255, help="radius, e.g. 8/255")
    p.add_argument("--temperature", default=None, help="none, fixed, njs or hns (PGD++, APGD++)")
    p.add_argument("--source", default=None, help="transfer: the attack run on the surrogate")
    group = p.add_argument_group("attack options (each applies to the attacks that have it)")
    for name, (annotation, default, owners) in _attack_options().items():
        flag = "--" + name.replace("_", "-")
        help_ = f"for: {owners}"
        if annotation == "bool":
            if default is True:
                group.add_argument(
                    "--no-" + name.replace("_", "-"),
                    dest=name,
                    action="store_false",
                    default=None,
                    help=help_,
                )
            else:
                group.add_argument(flag, dest=name, action="store_true", default=None, help=help_)
            continue
        aliases = [flag, "--step"] if name == "step_size" else [flag]
        group.add_argument(
            *aliases, dest=name, type=_option_parser(annotation, name), default=None, help=help_
        )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--surrogate", default=None, help="run folder of a surrogate model (transfer attacks)"
    )
    p.add_argument("--seed", type=int, default=0, help="example i uses fold_in(key(seed), i)")
    p.add_argument("--n", type=_positive_int("n"), default=None, help="first N test images")
    p.add_argument("--batch-size", type=_positive_int("batch size"), default=250)
    _add_dtype(p)
    _add_parallel(p)
    _add_data_dir(p)
    _add_progress(p)


def _add_dtype(p: argparse.ArgumentParser) -> None:
    from qadv.models.precision import COMPUTE_DTYPES

    p.add_argument(
        "--dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help="model compute dtype; bfloat16 is faster on GPU/TPU, its logits and the "
        "attack's arithmetic stay float32 (default float32)",
    )


def _add_parallel(p: argparse.ArgumentParser) -> None:
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


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as one line on stderr (exit status 2), like every other
    user error, instead of the usage text followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qadv",
        description="Honest robustness evaluation of quantized networks (FGSM++/PGD++).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "train",
        help="training: quantization-aware, adversarial (PGD-AT, FastAT), gradient-regularised",
        description="Train (or resume) a run folder. Flags override --config FILE, whose "
        "get_config() returns a TrainConfig or a dict; --set group.field=VALUE sets any field.",
    )
    t.add_argument("--config", default=None, help="Python config file with get_config()")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config field, e.g. --set optim.cycle_peak=0.3 (repeatable)",
    )
    t.add_argument("--dataset", default=None, help="fashion_mnist (default), mnist, cifar10, ...")
    t.add_argument("--arch", default=None, help="cnn (default), mlp, resnet20, resnet18, ...")
    t.add_argument(
        "--quant",
        default=None,
        help="ref (default), bnn_wq, bnn_waq, xnor, mbn:MxN (e.g. mbn:3x1), pact:K (e.g. pact:4)",
    )
    t.add_argument(
        "--wq-method",
        default=None,
        help="BNN weight binarizer: bc (default), gd_tanh, md_tanh_s (use with --anneal-end)",
    )
    t.add_argument(
        "--anneal-end",
        type=float,
        default=None,
        help="gd_tanh/md_tanh_s: grow the tanh β per step up to this value (e.g. 100), "
        "then train hard signs for the last --hard-fraction (default 0.1) of the steps",
    )
    t.add_argument("--hard-fraction", type=float, default=None)
    t.add_argument(
        "--recalibrate-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-estimate BatchNorm statistics of the hard-binarised network at the end "
        "(default: on for gd_tanh/md_tanh_s)",
    )
    t.add_argument("--m-bases", type=_positive_int("m-bases"), default=None)
    t.add_argument("--n-bases", type=_positive_int("n-bases"), default=None)
    t.add_argument("--bits", type=_positive_int("bits"), default=None)
    t.add_argument("--float-first", action="store_true", help="keep the first layer in float")
    t.add_argument("--float-last", action="store_true", help="keep the last layer in float")
    t.add_argument("--float-bias", action="store_true", help="keep biases in float")
    t.add_argument("--epochs", type=_positive_int("epochs"), default=None, help="default 10")
    t.add_argument("--batch-size", type=_positive_int("batch size"), default=None)
    t.add_argument("--optimizer", default=None, help="adam (default) or sgd")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--schedule", default=None, help="cosine (default), step, constant, cyclic")
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--train-examples", type=_positive_int("train examples"), default=None)
    t.add_argument("--test-examples", type=_positive_int("test examples"), default=None)
    adv = t.add_argument_group("adversarial training")
    adv.add_argument(
        "--adv",
        default=None,
        help="none (default), pgd (Madry), fastat (Wong) or a gradient attack (fgsm, apgd-ce, ...)",
    )
    adv.add_argument("--adv-eps", type=_fraction("adv eps"), default=None, help="default 8/255")
    adv.add_argument("--adv-steps", type=_positive_int("adv steps"), default=None, help="PGD: 7")
    adv.add_argument(
        "--adv-step-size",
        type=_fraction("adv step size"),
        default=None,
        help="default eps/4 (pgd), 1.25 eps (fastat)",
    )
    adv.add_argument("--adv-norm", default=None, help="linf (default) or l2")
    adv.add_argument(
        "--adv-temperature", default=None, help="none (default), fixed, njs, hns or prop1"
    )
    igr = t.add_argument_group("input-gradient regularisation (L + λ/2 ||∇x L||*²)")
    igr.add_argument("--igr", default=None, help="none (default), fd or exact (double backprop)")
    igr.add_argument("--igr-lambda", type=float, default=None, help="λ (default 0.1)")
    igr.add_argument("--igr-h", type=float, default=None, help="finite-difference step (0.01)")
    igr.add_argument("--igr-norm", default=None, help="threat norm: linf (dual l1) or l2")
    ev = t.add_argument_group("per-epoch evaluation")
    ev.add_argument("--robust-examples", type=int, default=None, help="PGD eval images (500)")
    ev.add_argument("--robust-eps", type=_fraction("robust eps"), default=None)
    t.add_argument("--checkpoint-every-steps", type=_positive_int("steps"), default=None)
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--out", required=True, help="run folder (checkpoints, metrics.jsonl)")
    _add_parallel(t)
    _add_data_dir(t)
    _add_progress(t)

    inf = sub.add_parser("info", help="parameters, MACs and BOPS per layer of a model")
    inf.add_argument("--arch", default="resnet20")
    inf.add_argument("--dataset", default="cifar10")
    inf.add_argument("--quant", default="ref", help="ref, bnn_wq, bnn_waq, xnor, mbn:MxN, pact:K")
    inf.add_argument("--json", action="store_true", help="print JSON instead of a table")

    e = sub.add_parser("eval", help="clean test accuracy of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="run folder written by `qadv train`")
    e.add_argument("--n", type=_positive_int("n"), default=None, help="first N test images")
    e.add_argument("--batch-size", type=_positive_int("batch size"), default=500)
    _add_dtype(e)
    _add_data_dir(e)

    a = sub.add_parser("attack", help="robust accuracy of a checkpoint under one attack")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--attack", default="pgd", help="a registered attack (see `qadv attacks`)")
    _add_attack_options(a)
    _add_run_options(a)
    a.add_argument("--out", required=True, help="result JSON (partial progress resumes)")

    v = sub.add_parser(
        "evaluate", help="ensemble evaluation (AutoAttack's cascade) of a checkpoint"
    )
    v.add_argument("--checkpoint", required=True)
    v.add_argument(
        "--preset",
        default=None,
        help="standard (APGD-CE, APGD-T, FAB-T, Square), plus-temperature, gradient",
    )
    v.add_argument(
        "--attacks",
        default=None,
        help="comma-separated attack names instead of a preset, e.g. apgd-ce,square,pgd++hns",
    )
    v.add_argument("--norm", default="linf", help="linf or l2")
    v.add_argument("--eps", type=_fraction("eps"), default=8 / 255, help="radius, e.g. 8/255")
    v.add_argument(
        "--steps", type=_positive_int("steps"), default=None, help="iterations of each member"
    )
    v.add_argument(
        "--queries", type=_positive_int("queries"), default=None, help="Square query budget"
    )
    _add_run_options(v)
    v.add_argument("--out", required=True, help="result JSON; members go to <out>.members/")

    ls = sub.add_parser("attacks", help="list the registered attacks, temperatures and presets")
    ls.add_argument("name", nargs="?", default=None, help="show one attack's options")

    g = sub.add_parser("diagnose", help="signal-propagation diagnostics (paper Table 13)")
    g.add_argument("--checkpoint", required=True)
    g.add_argument("--n", type=_positive_int("n"), default=500)
    g.add_argument("--batch-size", type=_positive_int("batch size"), default=100)
    g.add_argument("--out", default=None, help="JSON file for the statistics")
    _add_data_dir(g)

    s = sub.add_parser("table", help="Table-2-style summary of a folder of attack results")
    s.add_argument("folder", help="folder with the JSON files of `qadv attack` and `qadv evaluate`")
    s.add_argument("--wall-time", action="store_true", help="seconds instead of accuracy")

    sg = sub.add_parser(
        "signal",
        help="signal propagation, rho ablation, CLEVER and lower bounds (paper Tables 11-13)",
    )
    sg.add_argument("--checkpoint", required=True)
    sg.add_argument("--n", type=_positive_int("n"), default=200, help="first N test images")
    sg.add_argument("--norm", default="linf", help="linf or l2 (PGD, FAB and the bounds)")
    sg.add_argument("--eps", type=_fraction("eps"), default=8 / 255, help="radius, e.g. 8/255")
    sg.add_argument("--steps", type=_positive_int("steps"), default=20, help="PGD iterations")
    sg.add_argument(
        "--rhos", default=None, help="comma-separated NJS rho values (default: paper Table 12)"
    )
    sg.add_argument(
        "--clever-examples", type=int, default=50, help="correctly classified images (0: skip)"
    )
    sg.add_argument("--min-norm-attack", default="fab", help="fab or deepfool")
    sg.add_argument("--seed", type=int, default=0)
    sg.add_argument("--batch-size", type=_positive_int("batch size"), default=250)
    sg.add_argument("--out", required=True, help="report folder (signal.json, signal.md, plots)")
    _add_data_dir(sg)
    _add_progress(sg)

    st = sub.add_parser(
        "study", help="train and measure a grid of networks from a config file (one table)"
    )
    st.add_argument("--config", required=True, help="Python file defining config(**options)")
    st.add_argument("--out", required=True, help="study folder (runs, cells, study.md)")
    st.add_argument("--only", default=None, help="comma-separated cell names to run now")
    st.add_argument(
        "--set",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option of the config file's config() function, e.g. size=gpu (repeatable)",
    )
    _add_data_dir(st)
    _add_progress(st)

    x = sub.add_parser(
        "verify", help="exact robustness of a small MLP by MILP, and each attack's gap to it"
    )
    x.add_argument("--checkpoint", required=True, help="run folder of an mlp checkpoint")
    x.add_argument("--eps", required=True, help="comma-separated L∞ radii, e.g. 0.02,0.05,8/255")
    x.add_argument("--n", type=_positive_int("n"), default=100, help="first N test images")
    x.add_argument(
        "--time-limit", type=float, default=10.0, help="MILP seconds per example and radius"
    )
    x.add_argument(
        "--attacks",
        default="pgd,pgd++njs,square",
        help="comma-separated attack names (pgd++njs style for PGD++); '' for none",
    )
    x.add_argument("--steps", type=_positive_int("steps"), default=None, help="attack iterations")
    x.add_argument("--no-iprop", action="store_true", help="skip IPROP (BNN-WAQ only)")
    x.add_argument(
        "--minimal",
        type=int,
        default=0,
        metavar="K",
        help="also bracket the exact minimal L∞ perturbation of the first K correctly "
        "classified images by bisection, beside FAB's and DeepFool's (0: skip)",
    )
    x.add_argument(
        "--minimal-tol", type=_fraction("minimal tol"), default=1e-3, help="bisection width"
    )
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--out", required=True, help="folder: per-example results (resume), report")
    _add_data_dir(x)
    _add_progress(x)

    mk = sub.add_parser(
        "masking",
        help="gradient-masking report: checks with verdicts, accuracy against ε/iterations/step",
    )
    mk.add_argument("--checkpoint", required=True)
    mk.add_argument(
        "--surrogate", default=None, help="run folder of another model for the transfer check"
    )
    mk.add_argument("--n", type=_positive_int("n"), default=500, help="first N test images")
    mk.add_argument("--norm", default="linf", help="linf or l2")
    mk.add_argument(
        "--eps",
        type=_fraction("eps"),
        default=None,
        help="radius of the verdicts, e.g. 0.1 or 8/255 (default: 0.1 for (Fashion-)MNIST, "
        "8/255 otherwise)",
    )
    mk.add_argument("--steps", type=_positive_int("steps"), default=20, help="PGD iterations")
    mk.add_argument(
        "--max-steps", type=_positive_int("max steps"), default=200, help="iteration curve length"
    )
    mk.add_argument(
        "--queries", type=_positive_int("queries"), default=1000, help="Square query budget"
    )
    mk.add_argument(
        "--tolerance", type=float, default=2.0, help="points by which an attack must beat PGD"
    )
    mk.add_argument(
        "--checks", default=None, help="comma-separated subset of the checks (default: all)"
    )
    mk.add_argument("--batch-size", type=_positive_int("batch size"), default=250)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--out", default=None, help="report folder (default: <checkpoint>/masking)")
    _add_data_dir(mk)
    _add_progress(mk)

    d = sub.add_parser(
        "demo",
        help="the main job: float and BNN-WQ MLPs, masking reports, the attacks that break it",
    )
    d.add_argument("--out", default="runs/demo")
    d.add_argument(
        "--n", type=_positive_int("n"), default=500, help="first N test images evaluated"
    )
    d.add_argument(
        "--epochs",
        type=_positive_int("epochs"),
        default=None,
        help="override every model's training epochs",
    )
    d.add_argument("--batch-size", type=_positive_int("batch size"), default=250)
    _add_data_dir(d)
    _add_progress(d)
    return parser


_TRAIN_FLAGS = {
    "dataset": "data.dataset",
    "train_examples": "data.train_examples",
    "test_examples": "data.test_examples",
    "arch": "model.arch",
    "quant": "quant.policy",
    "wq_method": "quant.wq_method",
    "anneal_end": "quant.anneal_end",
    "hard_fraction": "quant.hard_fraction",
    "recalibrate_bn": "quant.recalibrate_bn",
    "epochs": "optim.epochs",
    "batch_size": "optim.batch_size",
    "optimizer": "optim.optimizer",
    "lr": "optim.lr",
    "schedule": "optim.schedule",
    "weight_decay": "optim.weight_decay",
    "adv": "adversary.name",
    "adv_eps": "adversary.eps",
    "adv_steps": "adversary.steps",
    "adv_step_size": "adversary.step_size",
    "adv_norm": "adversary.norm",
    "adv_temperature": "adversary.temperature",
    "igr": "regularizer.igr",
    "igr_lambda": "regularizer.lam",
    "igr_h": "regularizer.h",
    "igr_norm": "regularizer.norm",
    "robust_examples": "eval.robust_examples",
    "robust_eps": "eval.robust_eps",
    "checkpoint_every_steps": "checkpoint.every_steps",
    "seed": "seed",
}


def _parse_set(items: list[str]) -> dict:
    """``KEY=VALUE`` pairs; values are JSON (numbers, true/false, null, lists, strings)
    or fractions like 8/255; anything else is a string."""
    import json

    from qadv.report import parse_fraction

    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad --set {item!r}; use KEY=VALUE, e.g. optim.lr=0.01")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            try:
                value = parse_fraction(text, name=key) if "/" in text else text
            except ValueError:
                value = text
        out[key.strip()] = value
    return out


def _train_config(args):
    from qadv.training import TrainConfig, load_config_file

    overrides = {
        key: getattr(args, flag)
        for flag, key in _TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    policy_opts = {
        k: v
        for k, v in dict(
            m_bases=args.m_bases,
            n_bases=args.n_bases,
            bits=args.bits,
            float_first=args.float_first or None,
            float_last=args.float_last or None,
            float_bias=args.float_bias or None,
        ).items()
        if v is not None
    }
    overrides.update(_parse_set(args.set))
    if args.config is not None:
        config = load_config_file(args.config)
        if policy_opts:
            overrides["quant.policy_opts"] = {**config.quant.policy_opts, **policy_opts}
        return config.replace(**overrides) if overrides else config
    if policy_opts:
        overrides["quant.policy_opts"] = policy_opts
    seed = overrides.pop("seed", 0)
    return TrainConfig(seed=seed, **overrides)


def _cmd_train(args) -> None:
    from qadv.training import train

    config = _train_config(args)
    summary = train(
        config,
        args.out,
        data_dir=args.data_dir,
        progress=not args.no_progress,
        devices=_devices(args),
    )
    robust = ""
    if summary.get("robust_accuracy") is not None:
        robust = (
            f", PGD accuracy {100 * summary['robust_accuracy']:.2f}% at "
            f"eps={summary['robust_eps']:.4g}"
        )
    print(
        f"{config.model.arch}/{summary['policy']} on {config.data.dataset}: clean test "
        f"accuracy {100 * summary['clean_accuracy']:.2f}%{robust} in "
        f"{summary['wall_time_s']:.0f}s -> {args.out}"
    )


def _cmd_info(args) -> None:
    import json

    from qadv.info import format_info, model_info

    info = model_info(args.arch, dataset=args.dataset, quant=args.quant)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def _load(
    checkpoint: str,
    data_dir: str | None,
    n: int | None,
    devices: list | None = None,
    dtype: str = "float32",
):
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


def _cmd_eval(args) -> None:
    from qadv.evaluate import clean_predictions

    loaded, images, labels = _load(args.checkpoint, args.data_dir, args.n, dtype=args.dtype)
    preds = clean_predictions(loaded.logits_fn, images, batch_size=args.batch_size)
    acc = 100.0 * float((preds == labels).mean())
    print(f"{args.checkpoint}: clean accuracy {acc:.2f}% on {len(labels)} test images")


def _devices(args) -> list | None:
    """Every device (all hosts' after ``--distributed``) with ``--shard`` or
    ``--distributed``, else ``None`` (one device)."""
    if not (args.shard or args.distributed):
        return None
    import jax

    return jax.devices()


def _run_options(args, loaded, images) -> dict:
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
        devices=_devices(args),
    )


def _cmd_attack(args) -> None:
    from qadv.attacks import registry
    from qadv.evaluate import evaluate_attack

    options = {k: getattr(args, k, None) for k in _attack_options()}
    config = registry.make(
        args.attack,
        norm=args.norm,
        eps=args.eps,
        temperature=args.temperature,
        source=args.source,
        **options,
    )
    loaded, images, labels = _load(
        args.checkpoint, args.data_dir, args.n, _devices(args), dtype=args.dtype
    )
    record = evaluate_attack(
        loaded.logits_fn, images, labels, config, **_run_options(args, loaded, images)
    )
    fallbacks = f", {record['fallback_count']} β fallbacks" if "fallback_count" in record else ""
    print(
        f"{config.label}: clean {record['clean_accuracy']:.2f}%, robust "
        f"{record['robust_accuracy']:.2f}% on n={record['n']}{fallbacks} "
        f"({record['wall_time_s']:.1f}s) -> {args.out}"
    )


def _cmd_evaluate(args) -> None:
    from qadv import report
    from qadv.attacks import presets, registry
    from qadv.evaluate import evaluate_ensemble

    if (args.preset is None) == (args.attacks is None):
        raise ValueError(
            "give exactly one of --preset (one of: "
            + ", ".join(registry.preset_names())
            + ") or --attacks NAME,NAME,..."
        )
    overrides = {k: v for k, v in (("steps", args.steps), ("queries", args.queries)) if v}
    if args.preset is not None:
        configs = registry.preset(args.preset, norm=args.norm, eps=args.eps, **overrides)
        name = args.preset
    else:
        names = [a.strip() for a in args.attacks.split(",") if a.strip()]
        configs = presets.ensemble_members(names, norm=args.norm, eps=args.eps, **overrides)
        name = "+".join(names)
    loaded, images, labels = _load(
        args.checkpoint, args.data_dir, args.n, _devices(args), dtype=args.dtype
    )
    record = evaluate_ensemble(
        loaded.logits_fn, images, labels, configs, name=name, **_run_options(args, loaded, images)
    )
    rows = [
        [m["attack"], m["attacked"], m["broken"], m["robust_accuracy_after"], m["wall_time_s"]]
        for m in record["attacks"]
    ]
    print(
        report.format_table(
            ["attack", "attacked", "broken", "robust % after", "time (s)"], rows, markdown=False
        )
    )
    print(
        f"{name}: clean {record['clean_accuracy']:.2f}%, robust {record['robust_accuracy']:.2f}% "
        f"on n={record['n']} ({record['wall_time_s']:.1f}s) -> {args.out}"
    )


def _cmd_attacks(args) -> None:
    from qadv.attacks import registry

    if args.name is not None:
        cfg = registry.make(args.name)
        print(f"{args.name}: {cfg.label}")
        for opt in registry.option_names(args.name):
            value = getattr(cfg, opt, None)
            shown = registry.to_dict(value) if dataclasses.is_dataclass(value) else value
            print(
                f"  --{opt.replace('_', '-')}" + ("" if value is None else f"  (default {shown})")
            )
        return
    print("attacks:      " + ", ".join(registry.attack_names()))
    print("temperatures: " + ", ".join(registry.temperature_names()) + "  (e.g. pgd++hns)")
    print("presets:      " + ", ".join(registry.preset_names()))


def _cmd_diagnose(args) -> None:
    from qadv import report
    from qadv.evaluate import diagnose

    loaded, images, labels = _load(args.checkpoint, args.data_dir, args.n)
    stats = diagnose(loaded.logits_fn, images, labels, batch_size=args.batch_size)
    rows = [[k, v] for k, v in stats.items() if isinstance(v, int | float)]
    print(report.format_table(["statistic", "value"], rows, markdown=False))
    if args.out:
        report.atomic_write_json(args.out, {"checkpoint": args.checkpoint, **stats})


def _cmd_table(args) -> None:
    from qadv.report import results_table

    print(results_table(args.folder, wall_time=args.wall_time))


def _cmd_study(args) -> None:
    from qadv.study import load_study_config, run_study

    options = {}
    for item in args.options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad --set {item!r}; use KEY=VALUE, e.g. size=gpu")
        options[key.strip()] = value.strip()
    config = load_study_config(args.config, options)
    only = None
    if args.only is not None:
        only = [c.strip() for c in args.only.split(",") if c.strip()]
    result = run_study(
        config, args.out, only=only, data_dir=args.data_dir, progress=not args.no_progress
    )
    missing = f"; not finished: {', '.join(result['missing'])}" if result["missing"] else ""
    print(
        f"{config.name}: {len(result['complete'])}/{len(config.cells)} cells done{missing} "
        f"-> {Path(args.out) / 'study.md'}"
    )


def _cmd_signal(args) -> None:
    from qadv.evaluate.signal_report import PAPER_RHOS, signal_report

    rhos = PAPER_RHOS
    if args.rhos is not None:
        from qadv.report import parse_fraction

        rhos = tuple(parse_fraction(r, name="rho") for r in args.rhos.split(",") if r.strip())
    if args.clever_examples < 0:
        raise ValueError(f"bad --clever-examples {args.clever_examples}; use an integer >= 0")
    loaded, images, labels = _load(args.checkpoint, args.data_dir, args.n)
    record = signal_report(
        loaded,
        images,
        labels,
        out_dir=args.out,
        eps=args.eps,
        norm=args.norm,
        steps=args.steps,
        rhos=rhos,
        clever_examples=args.clever_examples,
        min_norm_attack=args.min_norm_attack,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.no_progress,
        model_name=str(args.checkpoint),
    )
    print(
        f"{args.checkpoint}: signal report on n={record['n']} "
        f"({record['wall_time_s']:.0f}s) -> {Path(args.out) / 'signal.md'}"
    )


def _cmd_verify(args) -> None:
    from qadv.report import parse_fraction
    from qadv.verify.network import extract_network
    from qadv.verify.report import gap_to_truth

    eps_list = [parse_fraction(e, name="eps") for e in args.eps.split(",") if e.strip()]
    if not eps_list or any(not 0 < e <= 1 for e in eps_list):
        raise ValueError(f"bad --eps {args.eps!r}; use comma-separated radii in (0, 1]")
    if not (np.isfinite(args.time_limit) and args.time_limit > 0):
        raise ValueError(f"bad --time-limit {args.time_limit!r}; use seconds > 0")
    if args.minimal < 0:
        raise ValueError(f"bad --minimal {args.minimal!r}; use an integer >= 0")
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    loaded, images, labels = _load(args.checkpoint, args.data_dir, args.n)
    net = extract_network(loaded)  # one-line error for a non-MLP checkpoint
    all_sign = all(a == "sign" for a in net.hidden_activations)
    record = gap_to_truth(
        loaded,
        images,
        labels,
        eps_list,
        attacks,
        out=args.out,
        time_limit=args.time_limit,
        seed=args.seed,
        run_iprop=all_sign and not args.no_iprop,
        attack_overrides={"steps": args.steps} if args.steps else None,
        progress=not args.no_progress,
    )
    print((Path(args.out) / "gap.md").read_text())
    print(f"-> {args.out} (gap.json, gap.md, flip_rate.png)")
    if args.minimal:
        from qadv.verify.report import minimal_perturbations

        minimal = minimal_perturbations(
            loaded,
            images,
            labels,
            count=args.minimal,
            tol=args.minimal_tol,
            time_limit=args.time_limit,
            out=args.out,
            seed=args.seed,
            progress=not args.no_progress,
        )
        print((Path(args.out) / "minimal.md").read_text())
        if any(minimal["summary"][a]["violations"] for a in minimal["attacks"]):
            raise ValueError(
                "an attack found a perturbation below the proven minimum; see minimal.md"
            )
    if any(a["violations"] for r in record["rows"] for a in r["attacks"].values()):
        raise ValueError("an attack broke an example the MILP proved robust; see gap.md")


def _cmd_masking(args) -> None:
    from qadv.checkpoint import load_checkpoint
    from qadv.evaluate.masking import CHECKS, MaskingConfig, masking_report

    checks = None
    if args.checks is not None:
        checks = [c.strip() for c in args.checks.split(",") if c.strip()]
        for c in checks:
            if c not in CHECKS:
                raise ValueError(f"unknown masking check {c!r}; choose from: " + ", ".join(CHECKS))
    loaded, images, labels = _load(args.checkpoint, args.data_dir, args.n)
    eps = args.eps
    if eps is None:
        eps = 0.1 if loaded.metadata["dataset"] in ("mnist", "fashion_mnist") else 8 / 255
    config = MaskingConfig(
        norm=args.norm,
        eps=eps,
        steps=args.steps,
        max_steps=args.max_steps,
        square_queries=args.queries,
        tolerance=args.tolerance,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    config.validate()
    surrogate = load_checkpoint(args.surrogate).logits_fn if args.surrogate else None
    out = Path(args.out) if args.out else Path(args.checkpoint) / "masking"
    from qadv.attacks import AttackContext

    r = masking_report(
        loaded.logits_fn,
        images,
        labels,
        config=config,
        surrogate=surrogate,
        context=AttackContext(calib_images=images, input_std=tuple(loaded.metadata["std"])),
        checks=checks,
        out_dir=out,
        progress=not args.no_progress,
        name=Path(args.checkpoint).name,
    )
    print(r["summary"].replace("**", ""))
    for v in r["checks"]:
        print(f"  {v['name']:<18} {v['status']:<18} {v['reason']}")
    print(f"-> {out / 'masking.md'}")


def _cmd_demo(args) -> None:
    from qadv.demo import run_demo

    result = run_demo(
        args.out,
        n=args.n,
        epochs=args.epochs,
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    print(result["verdict"].replace("**", ""))
    print()
    print(result["table"])
    print(f"\nreport: {Path(args.out) / 'report.md'}")


COMMANDS = {
    "train": _cmd_train,
    "info": _cmd_info,
    "eval": _cmd_eval,
    "attack": _cmd_attack,
    "evaluate": _cmd_evaluate,
    "attacks": _cmd_attacks,
    "diagnose": _cmd_diagnose,
    "table": _cmd_table,
    "verify": _cmd_verify,
    "masking": _cmd_masking,
    "demo": _cmd_demo,
    "signal": _cmd_signal,
    "study": _cmd_study,
}


_FILE_OUTPUTS = ("attack", "evaluate", "diagnose")
"""Commands whose ``--out`` is a file; every other command's is a folder."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every command takes: the precision policy and the compilation cache."""
    from qadv.precision import PRECISIONS

    for p in parser._subparsers._group_actions[0].choices.values():
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


def _compile_cache(disabled: bool) -> None:
    """JAX's persistent compilation cache in the user's cache folder, so a rerun (a
    resumed evaluation, the next model of a sweep) does not compile again."""
    import os

    import jax

    if disabled or os.environ.get("QADV_COMPILE_CACHE", "1") in ("0", "false", "no"):
        return
    if jax.config.jax_compilation_cache_dir:  # the user chose one
        return
    root = os.environ.get("QADV_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qadv", "jax"
    )
    try:
        os.makedirs(root, exist_ok=True)
    except OSError:
        return  # an unwritable cache folder only costs compile time
    jax.config.update("jax_compilation_cache_dir", root)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _add_common(parser)
    args = parser.parse_args(argv)
    try:
        if args.precision is not None:
            from qadv import precision

            precision.set_precision(args.precision)
        _compile_cache(args.no_compile_cache)
        if getattr(args, "out", None):
            from qadv.report import check_output_path

            check_output_path(args.out, folder=args.command not in _FILE_OUTPUTS)
        if getattr(args, "distributed", False):
            from qadv import parallel

            parallel.initialize()  # before any JAX computation
        COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"qadv {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"qadv {args.command}: interrupted; rerun the same command to resume", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
