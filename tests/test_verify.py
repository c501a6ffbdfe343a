"""Exact verification (MILP) against brute force, the JAX model and the attacks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import write_mnist_like

from qadv.apps import cli
from qadv.attacks import attack, presets, registry
from qadv.checkpoint import LoadedModel, open_manager, save_checkpoint
from qadv.models import get_model, init_variables, make_logits_fn
from qadv.quant import get_policy
from qadv.verify.enumerate import enumerate_robustness
from qadv.verify.iprop import iprop
from qadv.verify.milp import (
    NOT_ROBUST,
    ROBUST,
    UNSOLVED,
    exact_robustness,
    minimal_linf,
    sign_gaps,
    verify_batch,
)
from qadv.verify.network import Layer, Network, extract_network
from qadv.verify.report import gap_to_truth

SHAPE = (4, 4, 1)


def _randomised(variables, key):
    """Every parameter and BatchNorm statistic random (negative BN scales included)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys, strict=True):
        if str(path[-1].key) == "var":
            out.append(jax.random.uniform(k, leaf.shape, minval=0.2, maxval=3.0))
        else:
            out.append(jax.random.normal(k, leaf.shape))
    return jax.tree_util.tree_unflatten(tree, out)


def tiny(policy, widths, seed, num_classes=4, **opts):
    m = get_model(
        "mlp",
        num_classes=num_classes,
        policy=get_policy(policy, **opts),
        widths=widths,
        mean=(0.3,),
        std=(0.4,),
    )
    v = _randomised(
        init_variables(m, key=jax.random.key(seed), input_shape=SHAPE), jax.random.key(seed + 100)
    )
    return m, v, extract_network(m, v), make_logits_fn(m, v)


def examples(logits_fn, seed, n):
    x = np.random.default_rng(seed).uniform(size=(n, *SHAPE)).astype(np.float32)
    y = np.argmax(np.asarray(logits_fn(jnp.asarray(x))), axis=1)
    return x, y


def assert_counterexample(verdict, logits_fn, x, y, eps):
    assert verdict.x_adv.dtype == np.float32
    d = np.abs(verdict.x_adv.astype(np.float64) - x.astype(np.float64)).max()
    assert d <= eps
    assert verdict.x_adv.min() >= 0 and verdict.x_adv.max() <= 1
    pred = int(np.argmax(np.asarray(logits_fn(verdict.x_adv[None]))[0]))
    assert pred != y


@pytest.mark.parametrize(
    "policy,opts",
    [
        ("bnn_waq", {}),
        ("bnn_wq", {}),
        ("ref", {}),
        ("bnn_waq", {"float_first": True, "float_last": True}),
        ("bnn_waq", {"float_last": True}),
        ("bnn_wq", {"float_first": True, "float_last": True}),
        ("bnn_wq", {"float_bias": True}),
    ],
)
def test_extraction_reproduces_logits_fn(policy, opts):
    _, _, net, f = tiny(policy, (6, 5), 0, **opts)
    x = np.random.default_rng(1).uniform(size=(64, *SHAPE)).astype(np.float32)
    np.testing.assert_allclose(net.logits(x), np.asarray(f(jnp.asarray(x))), rtol=1e-5, atol=1e-5)


def test_extraction_rejects_other_archs_and_policies():
    cnn = get_model("cnn", num_classes=3, policy=get_policy("bnn_waq"), widths=(2,))
    with pytest.raises(ValueError, match="MLP"):
        extract_network(cnn, {})
    m = get_model("mlp", num_classes=3, policy=get_policy("xnor"), widths=(2,))
    v = init_variables(m, key=jax.random.key(0), input_shape=SHAPE)
    with pytest.raises(ValueError, match="xnor"):
        extract_network(m, v)


@pytest.mark.parametrize("policy,widths", [("bnn_waq", (5, 4)), ("bnn_wq", (3, 3))])
@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])
def test_milp_matches_enumeration(policy, widths, seed):
    _, _, net, f = tiny(policy, widths, seed)
    xs, ys = examples(f, seed, 3)
    statuses = []
    for x, y in zip(xs, ys, strict=True):
        row = []
        for eps in (0.02, 0.06, 0.15):
            v = exact_robustness(net, x, y, eps, logits_fn=f)
            e = enumerate_robustness(net, x, y, eps)
            assert v.status in (ROBUST, NOT_ROBUST)
            assert (v.status == ROBUST) == e.robust, (eps, v, e)
            if v.status == NOT_ROBUST:
                assert_counterexample(v, f, x, y, eps)
            row.append(v.status)
        # monotone in eps: once broken, broken for every larger radius
        assert row == sorted(row, key=lambda s: s == NOT_ROBUST)
        statuses += row
    assert ROBUST in statuses or NOT_ROBUST in statuses


def _integer_net(seed):
    """Two sign layers with exact-integer hidden pre-activations (no BatchNorm, integer
    biases): the second layer's ``a`` can be exactly 0, where ``sign(0) = +1``."""
    rng = np.random.default_rng(seed)
    n1, n2 = int(rng.integers(4, 11)), int(rng.integers(2, 7))
    std, mean = 0.4, 0.3
    w1 = np.where(rng.normal(size=(16, n1)) >= 0, 1.0, -1.0)
    b1 = rng.normal(size=n1) - (mean / std) * w1.sum(0)
    w2 = np.where(rng.normal(size=(n1, n2)) >= 0, 1.0, -1.0)
    b2 = np.round(rng.normal(size=n2) * 2)
    w3 = np.where(rng.normal(size=(n2, 4)) >= 0, 1.0, -1.0)
    b3 = np.round(rng.normal(size=4) * 2)
    layers = (Layer(w1 / std, b1, "sign"), Layer(w2, b2, "sign"), Layer(w3, b3, "none"))
    net = Network(layers, SHAPE, "bnn_waq")
    x = rng.uniform(size=SHAPE).astype(np.float32)
    return net, x, int(np.argmax(net.logits(x[None])[0]))


def _check_integer_case(seed, eps, **kw):
    net, x, y = _integer_net(seed)
    v = exact_robustness(net, x, y, eps, **kw)
    assert v.status != UNSOLVED, (seed, eps, v)
    assert (v.status == ROBUST) == enumerate_robustness(net, x, y, eps).robust, (seed, eps, v)
    if v.status == NOT_ROBUST:
        assert_counterexample(v, net.logits, x, y, eps)


# every one of these was "unsolved" when a tie a = 0 could take the -1 side of the big-M
# encoding and three no-good cuts were the limit; with the margin they need no cut at all
@pytest.mark.parametrize(
    "seed,eps", [(43, 0.2), (43, 0.5), (60, 0.2), (60, 0.5), (74, 0.08), (74, 0.5)]
)
def test_sign_ties_at_zero_are_decided(seed, eps):
    _check_integer_case(seed, eps)
    _check_integer_case(seed, eps, max_cuts=0)

    net, x, y = _integer_net(seed)
    with pytest.raises(ValueError, match="max_cuts"):
        exact_robustness(net, x, y, eps, max_cuts=-1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(80))
def test_integer_two_sign_layer_sweep(seed):
    for eps in (0.03, 0.08, 0.2, 0.5):
        _check_integer_case(seed, eps)


def test_sign_gaps_match_the_reachable_values():
    rng = np.random.default_rng(0)
    hs = np.array(np.meshgrid(*[[-1.0, 1.0]] * 5)).reshape(5, -1).T  # all of {±1}^5
    # ±1 weights, and ±1 weights times a BatchNorm-like factor (exact in binary, or not)
    for scale in (1.0, 0.375, 0.37):
        w = np.where(rng.normal(size=(5, 40)) >= 0, scale, -scale)
        w[:, :10] *= rng.integers(1, 4, size=(5, 10))  # integer multiples of the step
        b = np.concatenate([np.round(rng.normal(size=20) * 3) * scale, rng.normal(size=20)])
        gaps = sign_gaps(Layer(w, b, "sign"))
        a = hs @ w + b
        neg = np.where(a < 0, a, -np.inf).max(0)  # largest negative value per neuron
        has_neg = np.isfinite(neg)
        assert np.all(gaps >= 0) and np.sum(gaps > 0) >= 20
        if scale != 0.37:  # exact arithmetic: every neuron gets its margin
            assert np.all(gaps > 0)
        assert np.all(gaps[has_neg] <= -neg[has_neg])  # sound: no value in (-gap, 0)
        # exact for equal-magnitude weights of an unstable neuron (values on both sides
        # of 0); the lattice may be finer than the values otherwise. A possible tie that
        # rounding blurs (scale 0.37, a multiple of it as bias) gets no margin at all.
        pure = has_neg & (a.max(0) >= 0) & (np.arange(40) >= 10) & (gaps > 0)
        assert pure.sum() >= 10
        np.testing.assert_allclose(gaps[pure], -neg[pure], rtol=0, atol=1e-8)
    # no common step: no margin
    assert sign_gaps(Layer(np.array([[1.0], [np.pi]]), np.zeros(1), "sign")).tolist() == [0.0]
    # a neuron that comes within rounding of 0 from below gets no margin either
    w = np.array([[0.5], [0.3], [0.2]])
    assert sign_gaps(Layer(w, np.array([-1e-12]), "sign")).tolist() == [0.0]


def test_integer_bias_model_matches_enumeration():
    """The same through a real ``mlp`` (no BatchNorm, integer biases): counterexamples are
    confirmed on the JAX model."""
    m = get_model(
        "mlp",
        num_classes=4,
        policy=get_policy("bnn_waq"),
        widths=(6, 4),
        mean=(0.3,),
        std=(0.4,),
        use_batch_norm=False,
    )
    v = _randomised(
        init_variables(m, key=jax.random.key(7), input_shape=SHAPE), jax.random.key(107)
    )
    params = dict(v["params"])
    for name in ("QDense_1", "QDense_2"):
        layer = dict(params[name])
        layer["bias"] = jnp.round(layer["bias"] * 2)
        params[name] = layer
    v = {**v, "params": params}
    net, f = extract_network(m, v), jax.jit(make_logits_fn(m, v))
    assert np.all(net.layers[1].bias == np.round(net.layers[1].bias))
    xs, ys = examples(f, 7, 3)  # 5 of these 9 checks were "unsolved" with the old encoding
    for x, y in zip(xs, ys, strict=True):
        for eps in (0.05, 0.2, 0.5):
            verdict = exact_robustness(net, x, y, eps, logits_fn=f)
            assert verdict.status != UNSOLVED
            assert (verdict.status == ROBUST) == enumerate_robustness(net, x, y, eps).robust
            if verdict.status == NOT_ROBUST:
                assert_counterexample(verdict, f, x, y, eps)


def test_float_last_hardtanh_matches_enumeration():
    _, _, net, f = tiny("bnn_waq", (5, 4), 3, float_last=True)
    assert net.hidden_activations == ("sign", "hardtanh")
    xs, ys = examples(f, 3, 3)
    for x, y in zip(xs, ys, strict=True):
        for eps in (0.03, 0.1):
            v = exact_robustness(net, x, y, eps, logits_fn=f)
            assert (v.status == ROBUST) == enumerate_robustness(net, x, y, eps).robust
            if v.status == NOT_ROBUST:
                assert_counterexample(v, f, x, y, eps)


def test_minimal_linf_brackets_the_truth():
    _, _, net, f = tiny("bnn_waq", (5, 4), 0)
    xs, ys = examples(f, 5, 3)
    finite = 0
    for x, y in zip(xs, ys, strict=True):
        r = minimal_linf(net, x, y, tol=2e-3, logits_fn=f)
        assert not r.unsolved
        if not np.isfinite(r.upper):  # robust on the whole cube
            assert r.lower == 1.0 and enumerate_robustness(net, x, y, 1.0).robust
            continue
        finite += 1
        assert r.upper - r.lower <= 2e-3
        assert_counterexample(exact_robustness(net, x, y, r.upper, logits_fn=f), f, x, y, r.upper)
        if r.lower > 0:
            assert enumerate_robustness(net, x, y, r.lower).robust
        assert not enumerate_robustness(net, x, y, r.upper).robust
    assert finite > 0


def test_time_limit_gives_unsolved_never_counted():
    _, _, net, f = tiny("bnn_waq", (6, 4), 0)
    xs, ys = examples(f, 0, 2)
    out = verify_batch(net, xs, ys, 0.5, logits_fn=f, time_limit=1e-9)
    assert [v.status for v in out] == ["unsolved", "unsolved"]
    assert all(v.reason == "time limit" for v in out)


@pytest.mark.parametrize("policy", ["bnn_waq", pytest.param("bnn_wq", marks=pytest.mark.slow)])
def test_no_attack_beats_the_exact_value(policy):
    _, _, net, f = tiny(policy, (6, 4), 7)
    xs, ys = examples(f, 7, 8)
    eps = 0.08
    verdicts = verify_batch(net, xs, ys, eps, logits_fn=f)
    robust = np.array([v.status == ROBUST for v in verdicts])
    assert all(v.status != "unsolved" for v in verdicts)
    names = ["pgd", "pgd++njs", "pgd++hns", "square"]
    overrides = {"steps": 10, "queries": 200}
    for name, cfg in zip(
        names, presets.ensemble_members(names, norm="linf", eps=eps, **overrides), strict=True
    ):
        res = attack(cfg, f, jnp.asarray(xs), jnp.asarray(ys), key=jax.random.key(0))
        assert not np.any(np.asarray(res.success) & robust), name
    assert registry.make("pgd", eps=eps).eps == eps


def test_iprop_stays_in_ball_and_respects_the_truth():
    _, _, net, f = tiny("bnn_waq", (10, 6), 2)
    xs, ys = examples(f, 2, 4)
    wins = 0
    for eps in (0.05, 0.15):
        for x, y in zip(xs, ys, strict=True):
            r = iprop(net, x, y, eps, logits_fn=f, iterations=3)
            d = np.abs(r.x_adv.astype(np.float64) - x.astype(np.float64)).max()
            assert r.x_adv.dtype == np.float32 and d <= eps
            assert 0 <= r.x_adv.min() and r.x_adv.max() <= 1
            pred = int(np.argmax(np.asarray(f(r.x_adv[None]))[0]))
            assert r.success == (pred != y)
            if r.success:
                wins += 1
                assert exact_robustness(net, x, y, eps, logits_fn=f).status == NOT_ROBUST
    assert wins > 0


def test_iprop_rejects_relu_networks():
    _, _, net, _ = tiny("bnn_wq", (3,), 0)
    with pytest.raises(ValueError, match="sign"):
        iprop(net, np.zeros(SHAPE, np.float32), 0, 0.1)


def _loaded(policy, widths, seed):
    m, v, _, _ = tiny(policy, widths, seed)
    meta = {"arch": "mlp", "policy_name": policy, "image_shape": list(SHAPE)}
    return LoadedModel(m, v, meta)


def test_gap_to_truth_is_nonnegative_and_resumes(tmp_path, monkeypatch):
    loaded = _loaded("bnn_waq", (6, 4), 4)
    xs, ys = examples(loaded.logits_fn, 4, 5)
    kw = dict(attack_overrides={"steps": 5}, progress=False, iprop_options={"iterations": 2})
    rec = gap_to_truth(loaded, xs, ys, [0.05, 0.12], ["pgd"], out=tmp_path, **kw)
    assert rec["attacks"] == ["pgd", "iprop"]
    for row in rec["rows"]:
        assert row["n_solved"] + row["n_unsolved"] == 5
        for a in row["attacks"].values():
            assert a["gap"] >= 0 and a["violations"] == 0
    assert {p.name for p in tmp_path.iterdir()} >= {"gap.json", "gap.md", "flip_rate.png"}
    # a killed run: keep the header and two examples; the rest is recomputed, the rest reused
    path = tmp_path / "exact" / "eps_0.05.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    calls = []
    import qadv.verify.milp as milp_mod

    real = milp_mod.exact_robustness
    monkeypatch.setattr(
        milp_mod, "exact_robustness", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    again = gap_to_truth(loaded, xs, ys, [0.05, 0.12], ["pgd"], out=tmp_path, **kw)
    assert len(calls) == 3
    assert again["rows"] == rec["rows"] or _same_rows(again["rows"], rec["rows"])


def _same_rows(a, b):
    strip = lambda rows: [{k: v for k, v in r.items() if k != "milp_time_s"} for r in rows]  # noqa: E731
    return strip(a) == strip(b)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify_cli")
    data_dir = root / "data"
    data_dir.mkdir()
    write_mnist_like(data_dir, n_test=6, learnable=True)
    runs = {}
    for arch, widths in (("mlp", (4, 3)), ("cnn", (2,))):
        policy = get_policy("bnn_waq")
        m = get_model(arch, num_classes=10, policy=policy, widths=widths)
        v = _randomised(
            init_variables(m, key=jax.random.key(0), input_shape=(28, 28, 1)), jax.random.key(1)
        )
        meta = {
            "arch": arch,
            "arch_opts": {"widths": list(widths)},
            "num_classes": 10,
            "policy": policy.to_dict(),
            "policy_name": policy.name,
            "mean": [0.0],
            "std": [1.0],
            "image_shape": [28, 28, 1],
            "dataset": "mnist",
        }
        manager = open_manager(root / arch / "checkpoints")
        save_checkpoint(manager, 1, variables=v, train_state={"step": np.zeros(())}, metadata=meta)
        manager.close()
        runs[arch] = root / arch
    return runs, data_dir


def test_cli_verify(checkpoints, capsys, tmp_path):
    runs, data_dir = checkpoints
    argv = [
        "verify",
        "--checkpoint",
        str(runs["mlp"]),
        "--eps",
        "0.01,2/255",
        "--n",
        "3",
        "--time-limit",
        "20",
        "--attacks",
        "pgd",
        "--steps",
        "3",
        "--out",
        str(tmp_path),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    assert cli.main(argv) == 0
    assert "Gap to truth" in capsys.readouterr().out
    rec = json.loads((tmp_path / "gap.json").read_text())
    assert [r["eps"] for r in rec["rows"]] == [0.01, 2 / 255]
    # --minimal on this untrained checkpoint: every image misclassified, one clear line
    assert cli.main([*argv, "--minimal", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("no correctly classified example to measure") and "\n" not in err


@pytest.mark.parametrize(
    "which,eps,needle",
    [("cnn", "0.1", "MLP"), ("mlp", "0.1,abc", "bad eps"), ("mlp", "0,0.1", "bad --eps")],
)
def test_cli_verify_errors_are_one_line(checkpoints, capsys, tmp_path, which, eps, needle):
    runs, data_dir = checkpoints
    argv = [
        "verify",
        "--checkpoint",
        str(runs[which]),
        "--eps",
        eps,
        "--n",
        "2",
        "--out",
        str(tmp_path),
        "--data-dir",
        str(data_dir),
        "--no-progress",
    ]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_attack_counterexamples_settle_what_the_milp_leaves_open(monkeypatch):
    """With the MILP made to give up on every example, only verified attack successes
    settle examples (as not robust); nothing is ever counted robust without a proof."""
    import qadv.verify.report as report_mod
    from qadv.verify.milp import UNSOLVED, ExactOutcome

    loaded = _loaded("bnn_waq", (6, 4), 4)
    xs, ys = examples(loaded.logits_fn, 4, 6)

    def give_up(net, images, labels, eps, *, on_result, skip=(), **kw):
        for i in range(len(images)):
            if i not in skip:
                on_result(i, ExactOutcome(UNSOLVED, None, None, 0.0, 0, "time limit"))

    monkeypatch.setattr(report_mod, "verify_batch", give_up)
    rec = gap_to_truth(
        loaded,
        xs,
        ys,
        [0.12],
        ["pgd"],
        attack_overrides={"steps": 5},
        progress=False,
        run_iprop=False,
    )
    row = rec["rows"][0]
    assert row["n_solved_by_milp"] == 0 and row["n_settled_by_attack"] == row["n_solved"] > 0
    assert row["n_solved"] + row["n_unsolved"] == 6
    # every settled example is one PGD broke: exact and PGD agree (0 %) on them
    assert row["exact_robust_accuracy"] == 0.0 and row["attacks"]["pgd"]["gap"] == 0.0


@pytest.mark.parametrize(
    ("hidden", "applies"),
    [(("sign", "sign"), True), (("sign", "hardtanh"), False), (("relu",), False), ((), False)],
)
def test_iprop_applies_only_when_every_hidden_unit_is_a_sign(hidden, applies):
    from qadv.verify.iprop import iprop_applies

    w, b = np.ones((2, 2)), np.zeros(2)
    net = Network(tuple(Layer(w, b, a) for a in (*hidden, "none")), (2, 1, 1))
    assert iprop_applies(net) is applies


def test_cli_verify_fails_when_an_attack_contradicts_the_milp(monkeypatch, capsys, tmp_path):
    import qadv.apps.cli.verify as verify_cmd
    import qadv.verify.report as report_mod

    def fake_gap(*args, **kwargs):
        (tmp_path / "gap.md").write_text("gap table\n")
        return {"rows": [{"attacks": {"pgd": {"violations": 0}, "square": {"violations": 1}}}]}

    monkeypatch.setattr(verify_cmd, "load", lambda *a, **k: (None, None, None))
    monkeypatch.setattr(report_mod, "gap_to_truth", fake_gap)
    argv = ["verify", "--checkpoint", "c", "--eps", "0.1", "--out", str(tmp_path)]
    assert cli.main([*argv, "--no-progress", "--no-compile-cache"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "qadv verify: error: an attack broke an example the MILP proved robust; see gap.md"
    )


def test_moved_names_keep_their_import_paths():
    """``Verdict`` is the former name of ``ExactOutcome``; the encoding and the minimal
    perturbations moved to their own modules and still import from the old ones."""
    from qadv.verify import encoding, milp, minimal, report

    assert milp.Verdict is milp.ExactOutcome
    assert all(hasattr(milp, name) for name in milp.__all__)
    assert milp.sign_gaps is encoding.sign_gaps and milp.ball is encoding.ball
    assert report.minimal_perturbations is minimal.minimal_perturbations


def test_minimal_perturbations_bracket_the_attacks_and_resume(tmp_path, monkeypatch):
    """The exact minimum is never above what DeepFool found and never below a proven
    bound; a rerun reads every example back from ``minimal.jsonl``."""
    import qadv.verify.milp as milp_mod
    from qadv.verify.report import count_violations, minimal_perturbations

    loaded = _loaded("bnn_waq", (6, 4), 4)
    xs, ys = examples(loaded.logits_fn, 4, 3)
    kw = dict(count=2, tol=1e-2, min_norm_attacks=("deepfool",), out=tmp_path, progress=False)
    rec = minimal_perturbations(loaded, xs, ys, **kw)
    assert count_violations(rec) == 0 and len(rec["examples"]) == 2
    for e in rec["examples"]:
        assert e["unsolved"] or e["upper"] - e["lower"] <= 1e-2 + 1e-12
        if e["deepfool"] is not None and e["upper"] is not None:
            assert e["upper"] <= e["deepfool"] + 1e-6
    assert {"minimal.json", "minimal.md", "minimal.jsonl"} <= {p.name for p in tmp_path.iterdir()}
    monkeypatch.setattr(milp_mod, "minimal_linf", lambda *a, **k: pytest.fail("not resumed"))
    assert minimal_perturbations(loaded, xs, ys, **kw)["examples"] == rec["examples"]


# BNN-WAQ (3 inputs, 6 sign units, ±1 classifier: integer logits) whose only way out of
# class 2 in the ball is the exact tie logit_1 == logit_2 (argmax: class 1). One slack for
# the tie and the sign rows put the polished point on a sign boundary: "robust" after a cut.
_TIE_S0 = [[1, -1, 1, -1, -1, 1], [1, -1, -1, 1, -1, -1], [-1, -1, -1, -1, 1, 1]]  # signs
_TIE_W0 = np.array(_TIE_S0) * np.array([1.3631, 1.828, 1.1996, 0.8502, 0.9083, 1.4585])
_TIE_B0 = np.array([-0.1288, 0.4778, 0.2477, 1.0379, -0.8173, -0.8344])
_TIE_W1 = np.array([[-1, -1, 1, -1, 1, -1], [1, 1, 1, -1, 1, 1], [-1, -1, 1, -1, -1, -1]]).T
_TIE_X = np.array([0.43263078, 0.66929728, 0.42278469], np.float32).reshape(1, 3, 1)


def _tie_net():
    layers = (Layer(_TIE_W0, _TIE_B0, "sign"), Layer(_TIE_W1 * 1.0, np.zeros(3), "none"))
    w0, b0, w1 = (jnp.asarray(a, jnp.float32) for a in (_TIE_W0, _TIE_B0, _TIE_W1))

    @jax.jit
    def logits_fn(x):  # the same network in float32, as the JAX model computes it
        return jnp.where(x.reshape(x.shape[0], -1) @ w0 + b0[None] >= 0, 1.0, -1.0) @ w1

    return Network(layers, (1, 3, 1), "bnn_waq"), logits_fn


def test_exact_logit_tie_is_a_counterexample():
    (net, f), x, eps = _tie_net(), _TIE_X, 0.2
    assert net.logits(x[None])[0].tolist() == [-2.0, -4.0, 0.0]
    truth = enumerate_robustness(net, x, 2, eps)
    assert not truth.robust and truth.max_margin == 0.0  # adversarial by a tie only
    for logits_fn in (None, f):
        for max_cuts in (None, 0):
            v = exact_robustness(net, x, 2, eps, logits_fn=logits_fn, max_cuts=max_cuts)
            assert v.status == NOT_ROBUST and v.target == 1, (logits_fn, max_cuts, v)
            assert_counterexample(v, f, x, 2, eps)
            for logits in (net.logits(v.x_adv[None])[0], np.asarray(f(v.x_adv[None]))[0]):
                assert logits[1] == logits[2] > logits[0]  # interior: a tie in both
    assert exact_robustness(net, x, 2, 0.1, logits_fn=f).status == ROBUST
    assert enumerate_robustness(net, x, 2, 0.1).robust


def test_unconfirmed_adversarial_pattern_is_never_robust():
    """A model that confirms nothing (always class 2) cannot make a pattern that holds
    adversarial points disappear: the example is unsolved, not robust."""
    never = jax.jit(lambda x: jnp.zeros((x.shape[0], 3)).at[:, 2].set(1.0))
    v = exact_robustness(_tie_net()[0], _TIE_X, 2, 0.2, logits_fn=never)
    assert (v.status, v.reason, v.x_adv) == (UNSOLVED, "unconfirmed", None)


def test_milp_is_sound_on_integer_logit_ties():
    """Against brute force on tiny nets (3 inputs, 4 sign units, ±1 classifier) where
    ties decide; seed 16 was called robust at radii 0.15 and 0.2 (a tie lies in the ball)."""
    ties = 0
    for seed in range(10, 22):
        rng = np.random.default_rng(seed)
        w0 = np.where(rng.normal(size=(3, 4)) >= 0, 1.0, -1.0) * rng.uniform(0.5, 2.0, 4)
        b0 = rng.normal(size=4)
        w1 = np.where(rng.normal(size=(4, 3)) >= 0, 1.0, -1.0)
        net = Network((Layer(w0, b0, "sign"), Layer(w1, np.zeros(3), "none")), (1, 3, 1))
        for x in rng.uniform(size=(3, 1, 3, 1)).astype(np.float32):
            y = int(np.argmax(net.logits(x[None])[0]))
            for eps in (0.05, 0.1, 0.15, 0.2, 0.3):
                v, e = exact_robustness(net, x, y, eps), enumerate_robustness(net, x, y, eps)
                assert v.status != UNSOLVED and (v.status == ROBUST) == e.robust, (seed, v, e)
                if v.status == NOT_ROBUST:
                    assert_counterexample(v, net.logits, x, y, eps)
                ties += e.max_margin == 0.0
    assert ties > 0
