"""Bad input at every door: each is refused with one line, never answered silently.

The command line exits with status 2 and one line on stderr (no traceback); the library
raises ``ValueError``/``TypeError`` with a one-line message. Every listed bad value of
every command-line flag is tried; Hypothesis draws the library's bad values. The counts
of inputs tried and refused are printed at the end of the module (``pytest -s`` or
``-rA``).

Numerical hazards (huge or infinite logits, 2 or 1000 classes, batch 1): every gradient
attack returns finite images inside the ε-ball and [0, 1]. Huge and infinite logits are
accepted by PGD, FGSM, HNS and APGD, not refused: a zero or undefined gradient leaves a
valid image, and the evaluation verifies every break by re-running the model. NJS is
the exception by design: its β comes from the mean Jacobian singular value on the
calibration images, and it refuses with one line a model where that is 0 or not finite
(saturated logits) instead of choosing a meaningless temperature.
"""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from synthetic import relu_mlp, write_mnist_like

from qadv import attacks, evaluate
from qadv.apps import cli
from qadv.attacks import registry
from qadv.checkpoint import load_checkpoint
from qadv.training import TrainConfig

TRIED: collections.Counter = collections.Counter()
REFUSED: collections.Counter = collections.Counter()

SETTINGS = settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module", autouse=True)
def counts():
    yield
    lines = [f"{k}: {REFUSED[k]}/{TRIED[k]} refused" for k in sorted(TRIED)]
    print("\nbad inputs refused/tried:\n  " + "\n  ".join(lines))
    print(f"  total: {sum(REFUSED.values())}/{sum(TRIED.values())}")


def _one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A data folder, a trained tiny checkpoint, a foreign "checkpoint", torn IDX data."""
    root = tmp_path_factory.mktemp("bad")
    (root / "data").mkdir()
    write_mnist_like(root / "data", n_train=32, n_test=8, learnable=True)
    argv = ["train", "--dataset", "mnist", "--arch", "mlp", "--set"]
    argv += ['model.arch_opts={"widths":[8]}', "--epochs", "1", "--batch-size", "16"]
    argv += ["--robust-examples", "0", "--no-progress", "--out", str(root / "ckpt")]
    assert cli.main([*argv, "--data-dir", str(root / "data")]) == 0
    foreign = root / "foreign" / "checkpoints" / "3"
    (foreign / "metadata").mkdir(parents=True)
    (foreign / "commit_success.txt").write_text("ok")
    (foreign / "metadata" / "metadata").write_text('{"model": "resnet50", "framework": "torch"}')
    (root / "empty").mkdir()
    (root / "torn").mkdir()
    write_mnist_like(root / "torn", n_train=32, n_test=8, gz=False)
    p = root / "torn" / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-7])
    p = root / "torn" / "train-labels-idx1-ubyte"
    p.write_bytes(b"\x00\x00\x0d\x01")  # an IDX file of floats
    (root / "study.py").write_text("def config(:\n")
    return root


BAD_NUMBERS = ["-1", "0", "nan", "inf", "-inf", "1/0", "abc", "", "1e400", "0x10"]
BAD_COUNTS = ["-1", "0", "abc", "1.5", "", "1e3"]
UNKNOWN = ["warp", "", "PGD ", "l3", "../x", "ñ"]


def _cases(f):
    """Per command: (argv that would run, [(flag, bad values)])."""
    ck, data = str(f / "ckpt"), str(f / "data")
    ckpts = [str(f / "foreign"), str(f / "empty"), str(f / "nowhere"), data]
    run = ["--checkpoint", ck, "--data-dir", data, "--no-progress"]
    return {
        "train": (
            [
                "train",
                "--dataset",
                "mnist",
                "--arch",
                "mlp",
                "--out",
                str(f / "t"),
                "--data-dir",
                data,
            ],
            [
                ("--arch", UNKNOWN),
                ("--quant", [*UNKNOWN, "mbn:0x1", "pact:0", "mbn:3"]),
                ("--dataset", UNKNOWN),
                ("--epochs", BAD_COUNTS),
                ("--lr", ["-1", "nan", "inf", "abc", "0"]),
                ("--weight-decay", ["-1", "nan", "inf"]),
                ("--adv", UNKNOWN),
                ("--adv-eps", BAD_NUMBERS),
                ("--robust-eps", [*BAD_NUMBERS, "3"]),  # 3: pixel units, refused up front
                ("--optimizer", UNKNOWN),
                ("--schedule", UNKNOWN),
                ("--igr", UNKNOWN),
                ("--set", ["optim.lr=nan", "bogus.field=1", "optim.epochs=-3", "=3", "x"]),
                ("--data-dir", [str(f / "torn"), str(f / "empty")]),
                ("--config", [str(f / "nowhere.py"), str(f / "study.py")]),
            ],
        ),
        "info": (
            ["info"],
            [("--arch", UNKNOWN), ("--quant", UNKNOWN), ("--dataset", UNKNOWN)],
        ),
        "eval": (
            ["eval", "--checkpoint", ck, "--data-dir", data],
            [
                ("--checkpoint", ckpts),
                ("--n", BAD_COUNTS),
                ("--batch-size", BAD_COUNTS),
                ("--dtype", ["float8", "int8", ""]),
                ("--data-dir", [str(f / "torn")]),
            ],
        ),
        "attack": (
            ["attack", *run, "--out", str(f / "a.json"), "--steps", "1"],
            [
                ("--attack", UNKNOWN),
                ("--norm", UNKNOWN),
                ("--temperature", UNKNOWN),
                ("--eps", BAD_NUMBERS),
                ("--steps", BAD_COUNTS),
                ("--n", BAD_COUNTS),
                ("--batch-size", BAD_COUNTS),
                ("--seed", ["-1", "1.5", "abc"]),
                ("--checkpoint", ckpts),
                ("--data-dir", [str(f / "torn")]),
            ],
        ),
        "evaluate": (
            ["evaluate", *run, "--out", str(f / "e.json"), "--preset", "standard"],
            [
                ("--preset", UNKNOWN),
                ("--eps", BAD_NUMBERS),
                ("--norm", UNKNOWN),
                ("--steps", BAD_COUNTS),
                ("--queries", BAD_COUNTS),
                ("--seed", ["-1", "1.5", "abc"]),
                ("--checkpoint", ckpts),
            ],
        ),
        "attacks": (["attacks"], [("", [*UNKNOWN[:1], "pgd++warp", "apgd-x"])]),
        "diagnose": (
            ["diagnose", "--checkpoint", ck, "--data-dir", data],
            [("--checkpoint", ckpts), ("--n", BAD_COUNTS), ("--batch-size", BAD_COUNTS)],
        ),
        "table": (["table"], [("", [str(f / "nowhere"), str(f / "empty"), str(f / "study.py")])]),
        "signal": (
            ["signal", *run, "--out", str(f / "s")],
            [
                ("--rhos", ["2", "-1", "abc", "nan"]),
                ("--clever-examples", ["-1", "abc"]),
                ("--norm", UNKNOWN),
                ("--eps", BAD_NUMBERS),
                ("--min-norm-attack", UNKNOWN),
                ("--seed", ["-1", "1.5", "abc"]),
                ("--checkpoint", ckpts),
            ],
        ),
        "study": (
            ["study", "--out", str(f / "st")],
            [("--config", [str(f / "nowhere.py"), str(f / "study.py"), str(f / "empty")])],
        ),
        "verify": (
            ["verify", *run, "--out", str(f / "v"), "--eps", "0.01"],
            [
                ("--eps", ["0", "2", "abc", "", "-0.1", "nan", "0.1,,x"]),
                ("--time-limit", ["-1", "nan", "inf", "0", "abc"]),
                ("--minimal", ["-1", "abc"]),
                ("--attacks", ["warp", "pgd,warp"]),
                ("--seed", ["-1", "1.5", "abc"]),
                ("--checkpoint", ckpts),
            ],
        ),
        "masking": (
            ["masking", *run, "--out", str(f / "m")],
            [
                ("--checks", ["vibes", "zero-gradients,vibes"]),
                ("--tolerance", ["-1", "nan", "inf", "abc"]),
                ("--norm", UNKNOWN),
                ("--eps", BAD_NUMBERS),
                ("--steps", BAD_COUNTS),
                ("--max-steps", BAD_COUNTS),
                ("--seed", ["-1", "1.5", "abc"]),
                ("--checkpoint", ckpts),
            ],
        ),
        "demo": (
            ["demo", "--out", str(f / "d"), "--data-dir", data, "--no-progress"],
            [
                ("--n", [*BAD_COUNTS, "999"]),
                ("--epochs", BAD_COUNTS),
                ("--batch-size", BAD_COUNTS),
                ("--data-dir", [str(f / "torn"), str(f / "empty")]),
            ],
        ),
    }


def test_every_command_is_covered():
    parser = cli.build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert commands == set(cli.COMMANDS) == set(_cases(__import__("pathlib").Path(".")))


def _cli_refuses(argv, capsys) -> None:
    TRIED["cli " + argv[0]] += 1
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    captured = capsys.readouterr()
    assert code == 2, f"{argv} was accepted (exit {code}): {captured.out[-300:]}"
    assert _one_line(captured.err), f"{argv}: {captured.err!r}"
    REFUSED["cli " + argv[0]] += 1


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_cli_refuses_bad_input_with_one_line(files, capsys, command):
    """Every (flag, value) pair of :func:`_cases`, not a sample of them (a sample once
    missed that an empty ``--data-dir`` was read as the installed Fashion-MNIST)."""
    base, flags = _cases(files)[command]
    for flag, values in flags:
        for value in values:
            _cli_refuses([*base, value] if not flag else [*base, flag, value], capsys)


def test_an_option_before_the_command_is_named(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--nope"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized option '--nope' before the command" in err


# ----------------------------------------------------------------------------- library

D = 3
MODEL = relu_mlp(0, n_in=4, d=D)


def _good(b=4):
    x = np.random.default_rng(0).random((b, 2, 2, 1)).astype(np.float32)
    return x, np.arange(b, dtype=np.int32) % D


# (name, make bad (x, y) from good ones); every one of these must be refused
BAD_BATCHES = {
    "nan image": lambda x, y: (np.where(x > 0.5, np.nan, x).astype(np.float32), y),
    "inf image": lambda x, y: (np.full_like(x, np.inf), y),
    "-inf image": lambda x, y: (np.full_like(x, -np.inf), y),
    "image above 1": lambda x, y: (x + 1.0, y),
    "negative image": lambda x, y: (x - 1.0, y),
    "flat images": lambda x, y: (x.reshape(-1), y),
    "images without batch": lambda x, y: (x[0, ..., 0], y),
    "labels of another batch": lambda x, y: (x, y[:-1]),
    "labels (B, 1)": lambda x, y: (x, y[:, None]),
    "label = d": lambda x, y: (x, np.where(y == 0, D, y).astype(np.int32)),
    "label 1000": lambda x, y: (x, np.full_like(y, 1000)),
    "negative label": lambda x, y: (x, np.full_like(y, -1)),
    "float labels": lambda x, y: (x, y + np.float32(0.5)),
    "empty batch": lambda x, y: (x[:0], y[:0]),
}
LABEL_RANGE = {"label = d", "label 1000", "negative label", "float labels"}


def _library_refuses(entry: str, fn) -> None:
    TRIED["lib " + entry] += 1
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    assert "\n" not in str(info.value).strip(), f"{entry}: {info.value}"
    REFUSED["lib " + entry] += 1


def _entry_points():
    key = jax.random.key(0)
    pgd_cfg = registry.make("pgd", eps=0.1, steps=1)
    return {
        "attacks.pgd": lambda x, y: attacks.pgd(
            MODEL, x, y, key=key, eps=0.1, step_size=0.05, steps=1
        ),
        "attacks.fgsm": lambda x, y: attacks.fgsm(MODEL, x, y, key=key, eps=0.1),
        "attacks.attack": lambda x, y: attacks.attack(pgd_cfg, MODEL, x, y, key=key),
        "evaluate_attack": lambda x, y: evaluate.evaluate_attack(
            MODEL, x, y, pgd_cfg, progress=False
        ),
        "evaluate_ensemble": lambda x, y: evaluate.evaluate_ensemble(
            MODEL, x, y, [pgd_cfg], progress=False
        ),
    }


ENTRY_POINTS = sorted(_entry_points())


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@SETTINGS
@given(kind=st.sampled_from(sorted(BAD_BATCHES)))
def test_entry_points_refuse_bad_batches(entry, kind):
    if entry.startswith("evaluate") and kind in LABEL_RANGE:
        kind = "nan image"  # see test_evaluation_refuses_labels_out_of_range
    x, y = BAD_BATCHES[kind](*_good())
    _library_refuses(entry, lambda: _entry_points()[entry](x, y))


@pytest.mark.parametrize("entry", ["evaluate_attack", "evaluate_ensemble"])
def test_evaluation_refuses_labels_out_of_range(entry):
    for kind in sorted(LABEL_RANGE):
        x, y = BAD_BATCHES[kind](*_good())
        _library_refuses(entry, lambda x=x, y=y: _entry_points()[entry](x, y))


def test_masking_report_refuses_bad_batches():
    config = evaluate.MaskingConfig(eps=0.1, steps=1, max_steps=2, square_queries=2)
    for kind in ("nan image", "flat images", "labels of another batch"):
        x, y = BAD_BATCHES[kind](*_good())
        _library_refuses(
            "masking_report",
            lambda x=x, y=y: evaluate.masking_report(
                MODEL, x, y, config=config, checks=["zero-gradients"], progress=False
            ),
        )


# (an option given as None selects its default, so None is not among them)
BAD_OPTIONS = {
    "eps": [-0.1, 0.0, float("nan"), float("inf"), "8/255", True],
    "steps": [0, -1, 1.5, "3"],
    "step_size": [-1.0, float("nan"), float("inf")],
    "temperature": ["warm", 3, "HNS"],
    "norm": ["l3", "", "Linf"],
    "restarts": [0, -2, 0.5],
    "warp": [1],
}


@SETTINGS
@given(
    name=st.sampled_from(["pgd", "fgsm", "apgd-ce", "square", "fab", "pgd++hns", "warp", ""]),
    option=st.sampled_from(sorted(BAD_OPTIONS)),
    data=st.data(),
)
def test_registry_refuses_bad_names_and_options(name, option, data):
    value = data.draw(st.sampled_from(BAD_OPTIONS[option]), label="value")
    if name == "fgsm" and option in ("step_size", "steps"):
        name = "pgd"  # see test_fgsm_refuses_step_options
    _library_refuses("registry.make", lambda: registry.make(name, **{option: value}))


def test_direct_functions_refuse_unset_and_text_arguments():
    """pgd/fgsm take eps, steps, norm... as given: None is not "the default" there (only
    step_size=None is: Table 6's step), and text is not a number."""
    x, y = _good()
    key = jax.random.key(0)
    ok = dict(eps=0.1, step_size=0.05, steps=2)
    for name, value in [
        *((k, None) for k in ("eps", "steps", "norm", "restarts", "loss")),
        ("eps", "0.1"),
        ("eps", "8/255"),
        ("random_init", None),
    ]:
        _library_refuses(
            "attacks.pgd", lambda o={**ok, name: value}: attacks.pgd(MODEL, x, y, key=key, **o)
        )
    _library_refuses("attacks.fgsm", lambda: attacks.fgsm(MODEL, x, y, key=key, eps=None))
    # the step is still defaulted where it can be: NumPy step counts, traced radii
    assert registry.make("pgd", eps=0.1, steps=np.int64(10)).step_size == 0.1 / 4
    traced = jax.jit(lambda e: attacks.pgd(MODEL, x, y, key=key, eps=e, step_size=None, steps=2))
    assert traced(0.1).shape == x.shape


def test_protocol_refuses_bad_keys_configs_and_radii():
    x, y = _good()
    key = jax.random.key(0)
    cfg = registry.make("pgd", eps=0.1, steps=1)
    for keys in (jax.random.split(key, 3), jax.random.split(key, 5)):
        _library_refuses("attacks.attack", lambda k=keys: attacks.attack(cfg, MODEL, x, y, key=k))
        _library_refuses(
            "attacks.pgd",
            lambda k=keys: attacks.pgd(MODEL, x, y, key=k, eps=0.1, step_size=0.05, steps=1),
        )
    _library_refuses("attacks.attack", lambda: attacks.attack("pgd", MODEL, x, y, key=key))
    # an L2 radius beyond the diameter of these 4-pixel images (2) means pixel units
    big = registry.make("pgd", norm="l2", eps=3.0, steps=1)
    _library_refuses("attacks.attack", lambda: attacks.attack(big, MODEL, x, y, key=key))


def test_presets_refuse_options_no_member_has():
    for name, option in (("standard", "stepz"), ("gradient", "queries")):
        _library_refuses("registry.preset", lambda n=name, o=option: registry.preset(n, **{o: 5}))
    assert len(registry.preset("standard", steps=5, queries=10)) == 4  # each applies somewhere


def test_evaluation_refuses_bad_seeds_and_mixed_norms():
    x, y = _good()
    cfg = registry.make("pgd", eps=0.1, steps=1)
    for seed in (-1, 1.5, None, "0", True):
        _library_refuses(
            "evaluate_attack",
            lambda s=seed: evaluate.evaluate_attack(MODEL, x, y, cfg, seed=s, progress=False),
        )
        _library_refuses(
            "evaluate_ensemble",
            lambda s=seed: evaluate.evaluate_ensemble(MODEL, x, y, [cfg], seed=s, progress=False),
        )
        _library_refuses("MaskingConfig", lambda s=seed: evaluate.MaskingConfig(seed=s).validate())
    l2 = registry.make("pgd", norm="l2", eps=0.5, steps=1)
    _library_refuses(
        "evaluate_ensemble",
        lambda: evaluate.evaluate_ensemble(MODEL, x, y, [cfg, l2], progress=False),
    )


def test_curves_diagnostics_and_masking_caps_refuse_bad_values():
    x, y = _good()
    cfg = registry.make("pgd", eps=0.1, steps=1)
    for b in (-1, 0, 1.5):
        _library_refuses(
            "accuracy_curve", lambda b=b: evaluate.accuracy_curve(MODEL, x, y, cfg, batch_size=b)
        )
        _library_refuses("diagnose", lambda b=b: evaluate.diagnose(MODEL, x, y, batch_size=b))
    for cap in (2.0, float("inf"), float("nan")):
        _library_refuses(
            "MaskingConfig", lambda c=cap: evaluate.MaskingConfig(eps=0.1, eps_cap=c).validate()
        )


def test_fgsm_refuses_step_options():
    _library_refuses("registry.make", lambda: registry.make("fgsm", step_size=-1.0))


@SETTINGS
@given(
    name=st.sampled_from(["strongest", "", "Standard", None]),
    eps=st.sampled_from([8 / 255, -1.0, float("nan")]),
)
def test_registry_refuses_unknown_presets(name, eps):
    _library_refuses("registry.preset", lambda: registry.preset(name, eps=eps))
    _library_refuses("registry.preset", lambda: registry.preset("standard", norm="l3", eps=eps))


@SETTINGS
@given(
    field=st.sampled_from(
        ["lr", "epochs", "batch_size", "arch", "policy", "dataset", "weight_decay", "warp"]
    ),
    value=st.sampled_from([-1, 0, float("nan"), float("inf"), "x", None, 1.5]),
)
def test_train_config_refuses_bad_fields(field, value):
    ok = {("lr", 1.5), ("weight_decay", 0), ("weight_decay", 1.5)}
    if (field, value) in ok or (field in ("arch", "policy", "dataset") and value is None):
        value = "x"  # None selects a default; these values are fine
    _library_refuses("TrainConfig", lambda: TrainConfig(**{field: value}))


def test_train_refuses_missing_and_torn_data(files, tmp_path):
    config = TrainConfig(dataset="mnist", arch="mlp", epochs=1, source="idx")
    for data_dir in (files / "torn", files / "empty", files / "nowhere"):
        _library_refuses(
            "train",
            lambda d=data_dir: __import__("qadv").training.train(config, tmp_path, data_dir=d),
        )


def test_load_checkpoint_refuses_foreign_and_missing_runs(files, tmp_path):
    (tmp_path / "checkpoints" / "7").mkdir(parents=True)  # never committed
    for path in ("foreign", "empty", "nowhere", "data", "study.py"):
        _library_refuses("load_checkpoint", lambda p=path: load_checkpoint(files / p))
    _library_refuses("load_checkpoint", lambda: load_checkpoint(tmp_path))
    _library_refuses("load_checkpoint", lambda: load_checkpoint(files / "ckpt", step=10**6))
    _library_refuses(
        "load_checkpoint", lambda: load_checkpoint(files / "ckpt", compute_dtype="float8")
    )


def test_robust_accuracy_at_refuses_bad_records():
    good = {"examples": {"clean_correct": [True, False], "distance": [0.1, None]}}
    _library_refuses("robust_accuracy_at", lambda: evaluate.robust_accuracy_at({}, [0.1]))
    _library_refuses(
        "robust_accuracy_at", lambda: evaluate.robust_accuracy_at(good, [float("nan")])
    )


# ----------------------------------------------------------------------------- numerics


def _scaled(scale: float, d: int):
    """Logits ``scale * (x W)``: huge (±1e30) or infinite once ``scale`` is."""
    w = jax.random.normal(jax.random.key(1), (4, d), jnp.float32)

    def logits_fn(x):
        z = x.reshape(x.shape[0], -1) @ w
        return z * jnp.float32(scale) if np.isfinite(scale) else jnp.where(z > 0, scale, -scale)

    return logits_fn


GRADIENT_ATTACKS = [
    ("pgd", {}),
    ("pgd", {"temperature": "njs"}),
    ("pgd", {"temperature": "hns"}),
    ("fgsm", {}),
    ("fgsm", {"temperature": "njs"}),
    ("fgsm", {"temperature": "hns"}),
    ("apgd-ce", {}),
]


_SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    ("scale", "d", "b"),
    [
        (np.inf, 2, 1),
        pytest.param(1e30, 2, 1, marks=_SLOW),
        pytest.param(-1e30, 10, 3, marks=_SLOW),
        pytest.param(np.inf, 10, 2, marks=_SLOW),
        pytest.param(1.0, 1000, 1, marks=_SLOW),
    ],
)
@pytest.mark.parametrize(("name", "opts"), GRADIENT_ATTACKS)
def test_gradient_attacks_stay_finite_and_in_the_ball(name, opts, scale, d, b):
    if d == 1000 and opts.get("temperature") == "hns":
        opts = {**opts, "top_k": 10} if "top_k" in registry.option_names(name) else opts
    eps = 0.1
    steps = {"steps": 2} if name != "fgsm" else {}
    config = registry.make(name, eps=eps, **steps, **opts)
    f = _scaled(scale, d)
    x = jax.random.uniform(jax.random.key(2), (b, 2, 2, 1), jnp.float32)
    y = jnp.arange(b, dtype=jnp.int32) % d
    context = attacks.AttackContext(calib_images=np.asarray(x), input_std=(0.3,))
    if opts.get("temperature") == "njs" and abs(scale) > 1e6:
        # NJS refuses a model whose Jacobian on the calibration images is 0 or not finite
        _library_refuses("NJS on saturated logits", lambda: attacks.prepare(config, f, context))
        return
    data = attacks.prepare(config, f, context)
    keys = attacks.example_keys(jax.random.key(0), jnp.arange(b))
    res = attacks.execute(config, data, f, x, y, keys)
    x_adv = np.asarray(res.x_adv)
    assert x_adv.shape == x.shape and np.isfinite(x_adv).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert np.abs(x_adv - np.asarray(x)).max() <= eps * (1 + 1e-6)
