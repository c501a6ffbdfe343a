"""CLEVER, the L-/C-bounds and the signal table, against slow versions written from the
equations, on linear models (where the answers are analytic) and a tiny ReLU MLP."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from synthetic import relu_mlp

from qadv.attacks import attack, registry
from qadv.evaluate import bounds
from qadv.evaluate.signal_report import (
    SignalConfig,
    rho_ablation,
    signal_report,
    signal_table,
    temperature_betas,
)

SHAPE = (4, 4, 1)
N = 16
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}


def _linear(seed=0, d=2, b=6, lead=0.15):
    """Affine model ``x @ w + c`` with points in the middle of [0, 1] that it classifies
    correctly (labels = predictions)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(N, d)).astype(np.float32)
    c = rng.normal(size=(d,)).astype(np.float32) * lead
    x = rng.uniform(0.4, 0.6, (b, *SHAPE)).astype(np.float32)
    wj, cj = jnp.asarray(w), jnp.asarray(c)

    def f(z):
        return z.reshape(z.shape[0], -1) @ wj + cj[None, :]

    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), axis=-1)).astype(np.int32)
    return f, x, y, w.astype(np.float64), c.astype(np.float64)


def _exact_distance(x, y, w, c, norm):
    """Minimal distance to the decision boundary of an affine model (box ignored)."""
    z = x.reshape(len(x), -1).astype(np.float64) @ w + c
    out = []
    for i in range(len(x)):
        out.append(
            min(
                (z[i, y[i]] - z[i, j]) / np.linalg.norm(w[:, y[i]] - w[:, j], DUAL[norm])
                for j in range(w.shape[1])
                if j != y[i]
            )
        )
    return np.array(out)


# ------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("norm", ["l1", "l2", "linf"])
def test_sample_ball_is_uniform_in_the_ball(norm):
    n, r = 4000, 0.3
    v = np.asarray(bounds.sample_ball(jax.random.key(1), jnp.zeros((3, 2)), r, norm, n))
    flat = v.reshape(n, -1)
    size = flat.shape[1]
    ord_ = {"l1": 1, "l2": 2, "linf": np.inf}[norm]
    norms = np.linalg.norm(flat, ord_, axis=1)
    assert norms.max() <= r * (1 + 1e-5)
    # uniform in a ball of dimension N: P(||v|| <= t r) = t^N, so E||v|| = N/(N+1) r
    assert norms.mean() == pytest.approx(size / (size + 1) * r, rel=0.02)
    assert np.abs(flat.mean(0)).max() < 0.03  # symmetric


def test_lp_norm_matches_numpy_and_survives_tiny_values():
    v = np.random.default_rng(0).normal(size=(3, 5, 2)).astype(np.float32)
    for norm, o in (("l1", 1), ("l2", 2), ("linf", np.inf)):
        got = np.asarray(bounds.lp_norm(jnp.asarray(v), norm))
        np.testing.assert_allclose(got, np.linalg.norm(v.reshape(3, -1), o, axis=1), rtol=1e-5)
    tiny = jnp.full((1, 4), 1e-30, jnp.float32)
    assert float(bounds.lp_norm(tiny, "l2")[0]) == pytest.approx(2e-30, rel=1e-5)
    with pytest.raises(ValueError, match="unknown norm 'l3'"):
        bounds.lp_norm(tiny, "l3")


# --------------------------------------------------------------------------- CLEVER


def test_reverse_weibull_location():
    assert bounds.reverse_weibull_location([0.0, 0.0]) == 0.0
    assert bounds.reverse_weibull_location([3.0] * 5) == 3.0
    rng = np.random.default_rng(0)
    # maxima of a reverse Weibull with end point 3: the fit recovers it
    sample = 3.0 - 0.5 * rng.weibull(3.0, 400)
    loc = bounds.reverse_weibull_location(sample)
    assert sample.max() <= loc < 3.1
    # the estimate scales with the data (standardised fit)
    for s in (1e-20, 1e4):
        assert bounds.reverse_weibull_location(s * sample) == pytest.approx(s * loc, rel=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("radius", [5.0, 0.05])
def test_clever_on_a_linear_model_is_the_analytic_bound(norm, radius):
    f, x, _, w, c = _linear(seed=1, d=4)
    pred = np.asarray(jnp.argmax(f(jnp.asarray(x)), axis=-1))
    exact = _exact_distance(x, pred, w, c, norm)
    got = bounds.clever(
        f,
        x,
        key=jax.random.key(0),
        norm=norm,
        radius=radius,
        nb_batches=4,
        batch_size=3,
        outputs=("logits",),
        example_batch=4,
    )["logits"]
    np.testing.assert_allclose(got, np.minimum(exact, radius), rtol=1e-4)


def test_clever_probs_tends_to_the_logits_score_at_small_beta_and_logits_ignore_beta():
    f, x, _, _, _ = _linear(seed=2, d=3, b=4)
    kw = dict(key=jax.random.key(0), norm="l2", radius=5.0, nb_batches=3, batch_size=4)
    out = bounds.clever(
        f, x, betas={"small": 1e-4, "big": np.full(4, 3.0)}, outputs=("probs", "logits"), **kw
    )
    np.testing.assert_allclose(out["small"], out["logits"], rtol=2e-3)
    # at beta = 3 the softmax is curved: its score differs from the logits score
    assert np.abs(out["big"] - out["logits"]).max() > 1e-3
    # temperature never changes the logits score; pooled sampling gives the same on a
    # linear model (every gradient is equal)
    pooled = bounds.clever(f, x, outputs=("logits",), pool_factor=2, **kw)["logits"]
    np.testing.assert_allclose(pooled, out["logits"], rtol=1e-5)
    with pytest.raises(ValueError, match="bad CLEVER outputs"):
        bounds.clever(f, x, outputs=("margins",), **kw)
    with pytest.raises(ValueError, match="bad radius"):
        bounds.clever(f, x, **{**kw, "radius": -1.0})


def test_clever_is_independent_of_the_batching():
    f = relu_mlp(3, n_in=N, hidden=8, d=4)
    x = np.random.default_rng(3).uniform(0, 1, (5, *SHAPE)).astype(np.float32)
    kw = dict(
        key=jax.random.key(2),
        norm="l1",
        radius=2.0,
        nb_batches=6,
        batch_size=5,
        pool_factor=2,
        betas={"b": 0.7},
        outputs=("probs", "logits"),
    )
    a = bounds.clever(f, x, example_batch=5, **kw)
    b = bounds.clever(f, x, example_batch=2, **kw)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5)
        assert np.all((a[k] >= 0) & (a[k] <= 2.0))


# ------------------------------------------------------------------ L- and C-bounds


def test_l_and_c_bound_formulas():
    s, g, c = np.array([2.0, 0.5, -1.0]), np.array([1.0, 3.0, 1.0]), np.array([4.0, 0.1, 1.0])
    textbook = (-g + np.sqrt(g * g + 2 * c * np.maximum(s, 0))) / c
    np.testing.assert_allclose(bounds.c_bound(s, g, c), textbook, rtol=1e-12)
    np.testing.assert_allclose(bounds.l_bound(s, g), np.maximum(s, 0) / g)
    # C -> 0: the C-bound tends to the (local) L-bound s / ||grad||
    for cc in (1e-3, 1e-6, 0.0):
        np.testing.assert_allclose(
            bounds.c_bound(s, g, np.full(3, cc)), np.maximum(s, 0) / g, rtol=2 * cc + 1e-12
        )
    assert bounds.l_bound([1.0], [0.0], radius=0.3).tolist() == [0.3]
    assert bounds.c_bound([1.0], [2.0], [0.0], radius=0.1).tolist() == [0.1]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_bounds_on_a_binary_linear_model_are_the_exact_distance(norm):
    f, x, y, w, c = _linear(seed=4, d=2)
    exact = _exact_distance(x, y, w, c, norm)
    r = bounds.lipschitz_bounds(
        f, x, y, key=jax.random.key(0), norm=norm, radius=1.0, n_samples=16, example_batch=4
    )
    np.testing.assert_allclose(r["l_bound"], exact, rtol=1e-4)
    np.testing.assert_allclose(
        r["lipschitz"], np.linalg.norm(w[:, 0] - w[:, 1], DUAL[norm]), rtol=1e-5
    )
    assert r["curvature"].max() < 1e-3  # float rounding only: the loss is affine
    np.testing.assert_allclose(r["c_bound"], r["l_bound"], rtol=1e-3)
    # FAB's minimal distance on the same model never falls below the bound
    res = attack(
        registry.make("fab", norm=norm, eps=1.0, steps=20),
        f,
        jnp.asarray(x),
        jnp.asarray(y),
        key=jax.random.key(0),
    )
    cmp = bounds.compare_with_distance(r, np.asarray(res.distance))
    assert cmp["l_violations"] == 0 and cmp["c_violations"] == 0
    # a (fake) distance below the bound is flagged
    fake = np.asarray(res.distance).copy()
    fake[2] = 0.5 * r["l_bound"][2]
    assert bounds.compare_with_distance(r, fake)["l_violation_indices"] == [2]


def test_bounds_match_a_slow_per_example_version():
    """L, C and the bounds from the sample points, recomputed one point at a time."""
    f = relu_mlp(5, n_in=N, hidden=10, d=3)
    x = np.random.default_rng(5).uniform(0.2, 0.8, (3, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), axis=-1)).astype(np.int32)
    key, radius, n = jax.random.key(7), 0.1, 12
    r = bounds.lipschitz_bounds(f, x, y, key=key, norm="linf", radius=radius, n_samples=n)

    def loss(z, yi):
        zz = f(z[None])[0]
        return jnp.max(jnp.where(jnp.arange(3) == yi, -jnp.inf, zz)) - zz[yi]

    value_j, grad_j = jax.jit(loss), jax.jit(jax.grad(loss))
    from qadv.attacks.keys import example_keys

    keys = example_keys(key, 3)
    for i in range(3):
        xi = jnp.asarray(x[i])
        pts = np.clip(x[i] + np.asarray(bounds.sample_ball(keys[i], xi, radius, "linf", n)), 0, 1)
        l0 = float(value_j(xi, y[i]))
        g0 = np.asarray(grad_j(xi, y[i]), np.float64)
        lip, curv = np.abs(g0).sum(), 0.0
        for p in pts:
            gi = np.asarray(grad_j(jnp.asarray(p), y[i]), np.float64)
            lip = max(lip, np.abs(gi).sum())
            v = p.astype(np.float64) - x[i]
            rem = float(value_j(jnp.asarray(p), y[i])) - l0 - (g0 * v).sum()
            curv = max(curv, 2 * max(rem, 0.0) / np.abs(v).max() ** 2)
        assert r["lipschitz"][i] == pytest.approx(lip, rel=1e-4)
        assert r["curvature"][i] == pytest.approx(curv, rel=1e-3, abs=1e-3)
        assert r["l_bound"][i] == pytest.approx(min(max(-l0, 0) / lip, radius), rel=1e-4)


# ---------------------------------------------------------------------- signal table


def _slow_signal(f, x, y, beta):
    """Table 13 quantities one example at a time, with numpy's SVD."""
    sv, psi, gn, sg = [], [], [], []
    for i in range(len(x)):
        xi = jnp.asarray(x[i : i + 1])
        jac = np.asarray(jax.jacrev(lambda z: f(z)[0])(xi), np.float64).reshape(-1, x[0].size)
        sv.append(beta[i] * np.linalg.svd(jac, compute_uv=False))
        a = np.asarray(f(xi)[0], np.float64) * beta[i]
        p = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
        psi.append(np.linalg.norm(p - np.eye(len(p))[y[i]]))
        bi, yi = beta[i], y[i]
        g = np.asarray(
            jax.grad(lambda z, b=bi, t=yi: -jax.nn.log_softmax(b * f(z)[0])[t])(xi), np.float64
        )
        gn.append(np.linalg.norm(g))
        sg.append(np.sqrt((g != 0).sum()))
    sv = np.concatenate(sv)
    return sv.mean(), sv.std(), np.mean(psi), np.mean(gn), np.mean(sg)


def test_signal_table_matches_slow_loops_for_each_temperature():
    f = relu_mlp(6, n_in=N, hidden=12, d=4)
    x = np.random.default_rng(6).uniform(0, 1, (6, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), axis=-1)).astype(np.int32)
    y[0] = (y[0] + 1) % 4  # one misclassified example: left out of the table
    temps = ("none", registry.make_temperature("fixed", beta=0.5), "njs", "hns")
    tab = signal_table(f, x, y, temperatures=temps, batch_size=4)
    assert list(tab["rows"]) == ["none", "fixed(0.5)", "njs", "hns"]
    assert tab["n_used"] == 5 and tab["sign_grad_norm_max"] == 4.0
    keep = np.arange(1, 6)
    for t, name in zip(temps, tab["rows"], strict=True):
        beta = temperature_betas(f, x, y, t)["beta"]
        row = tab["rows"][name]
        ref = _slow_signal(f, x[keep], y[keep], beta[keep])
        got = (
            row["jsv_mean"],
            row["jsv_std"],
            row["psi_norm_mean"],
            row["grad_norm_mean"],
            row["sign_grad_norm_mean"],
        )
        np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-6)
    # the betas are the strategies' own: NJS from its rule, HNS per example
    logits = np.asarray(f(jnp.asarray(x)), np.float64)
    b1 = 1.0 / np.mean(
        [
            np.linalg.svd(
                np.asarray(jax.jacrev(lambda z: f(z)[0])(jnp.asarray(x[i : i + 1]))).reshape(4, -1),
                compute_uv=False,
            )
            for i in range(6)
        ]
    )
    z = b1 * logits
    lse = [
        np.log(np.exp(z[i] - z[i].max())[np.arange(4) != y[i]].sum())
        + z[i].max()
        - (np.log(np.exp(z[i] - z[i].max()).sum()) + z[i].max())
        for i in range(6)
    ]
    gamma = z.max(1) - z.min(1)
    beta2 = np.where(
        np.array(lse) <= np.log(0.01), (-np.log(0.01) + np.log(0.99) + np.log(3)) / gamma, 1.0
    )
    np.testing.assert_allclose(temperature_betas(f, x, y, "njs")["beta"], b1 * beta2, rtol=1e-4)
    hns_one = [temperature_betas(f, x[i : i + 1], y[i : i + 1], "hns")["beta"][0] for i in range(6)]
    np.testing.assert_allclose(
        temperature_betas(f, x, y, "hns", batch_size=4)["beta"], hns_one, rtol=1e-5
    )


def test_rho_ablation_rows_and_resume(tmp_path):
    f = relu_mlp(7, n_in=N, hidden=12, d=4)
    x = np.random.default_rng(7).uniform(0, 1, (10, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), axis=-1)).astype(np.int32)
    kw = dict(
        eps=0.05,
        steps=3,
        rhos=(1e-3, 0.1),
        fixed_betas=(0.1,),
        prop1_rhos=(1e-5,),
        include_hns=False,
        out_dir=tmp_path,
        batch_size=8,
    )
    rows = rho_ablation(f, x, y, **kw)
    assert [r["tag"] for r in rows] == [
        "pgd",
        "pgd_fixed_0.1",
        "pgd_njs_rho_0.001",
        "pgd_njs_rho_0.1",
        "pgd_prop1_rho_1e-05",
    ]
    assert rows[4]["label"] == "PGD++ (Prop. 1, ρ=1e-05) L∞"
    assert rows[2]["rho"] == 1e-3 and rows[1]["beta_fixed"] == 0.1
    assert all(0 <= r["robust_accuracy"] <= r["clean_accuracy"] == 100.0 for r in rows)
    # each row is the same as a direct evaluation with the registry's config
    direct = attack(
        registry.make("pgd", eps=0.05, steps=3, temperature="njs", rho=0.1),
        f,
        jnp.asarray(x),
        jnp.asarray(y),
        key=jax.random.key(0),
    )
    assert rows[3]["label"] == "PGD++ (NJS) L∞"
    saved = json.loads((tmp_path / "pgd_njs_rho_0.1.json").read_text())
    assert saved["config"]["temperature"]["rho"] == 0.1
    assert direct.x_adv.shape == x.shape
    again = rho_ablation(f, x, y, **kw)  # finished records are reused, not rerun
    assert [r["wall_time_s"] for r in again] == [r["wall_time_s"] for r in rows]
    with pytest.raises(ValueError, match=r"bad rho 1\.5"):
        rho_ablation(f, x, y, **{**kw, "rhos": (1.5,)})


@pytest.mark.slow
def test_signal_report_writes_its_files(tmp_path):
    f = relu_mlp(8, n_in=N, hidden=12, d=4)
    x = np.random.default_rng(8).uniform(0, 1, (8, *SHAPE)).astype(np.float32)
    y = np.asarray(jnp.argmax(f(jnp.asarray(x)), axis=-1)).astype(np.int32)
    kw = dict(
        out_dir=tmp_path,
        eps=0.05,
        steps=2,
        rhos=(0.01,),
        fixed_betas=(0.1,),
        clever_examples=3,
        clever_batches=3,
        clever_batch_size=4,
        clever_pool_factor=2,
        bound_samples=6,
        min_norm_steps=5,
        beta_sweep_examples=3,
        batch_size=8,
    )
    rec = signal_report(f, x, y, **kw)
    files = ("signal.json", "signal.md", "bounds_hist.png", "clever.png", "rho_ablation.png")
    for name in (*files, "beta_sweep_signal.png", "sections/beta_sweep.json"):
        assert (tmp_path / name).exists(), name
    md = (tmp_path / "signal.md").read_text()
    assert "Table 13" in md and "Table 12" in md and "CLEVER" in md and "Finlay" in md
    assert "Figures 4-5" in md and rec["beta_sweep"]["examples"] == [0, 1, 2]
    assert set(rec["clever"]["summary"]) == {"original", "fixed(0.01)", "njs", "hns", "logits"}
    assert len(rec["per_example"]["bounds"]["l_bound"]) == 8
    assert rec["bounds"]["l_violations"] == len(rec["bounds"]["l_violation_indices"])
    again = signal_report(f, x, y, **kw)  # every section is reused
    assert again["clever"] == rec["clever"] and again["ablation"] == rec["ablation"]
    # the config form is the same report: every section and attack record is reused
    opts = {k: v for k, v in kw.items() if k != "out_dir"}
    same = signal_report(f, x, y, config=SignalConfig(**opts), out_dir=tmp_path)
    assert same["ablation"] == rec["ablation"] and same["per_example"] == rec["per_example"]
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        signal_report(f, x, y, **{**kw, "norm": "l1"})


@pytest.mark.parametrize(
    "field, value, needle",
    [
        ("norm", "l1", "unknown norm 'l1'; choose one of: linf, l2"),
        ("eps", float("nan"), "bad eps nan"),
        ("eps", 0, "bad eps 0"),
        ("rhos", (0.01, 1.5), "bad rho 1.5"),
        ("rhos", 0.5, "invalid rhos 0.5"),
        ("prop1_rhos", (0.0,), "bad rho 0.0"),
        ("fixed_betas", (0.1, -1.0), "bad fixed beta -1.0"),
        ("min_norm_attack", "cw", "unknown minimum-norm attack 'cw'"),
        ("steps", 0, "invalid steps 0; choose an integer >= 1"),
        ("batch_size", True, "invalid batch_size True"),
        ("min_norm_steps", 2.5, "invalid min_norm_steps 2.5"),
        ("signal_examples", -1, "invalid signal_examples -1; choose an integer >= 0"),
        ("clever_examples", None, "invalid clever_examples None"),
        ("bound_examples", 1.5, "invalid bound_examples 1.5"),
        ("seed", "0", "bad seed '0'"),
        ("seed", -1, "bad seed -1"),
        ("clever_norm", "l3", "unknown clever_norm 'l3'; choose one of: l1, l2, linf"),
        ("clever_radius", -1.0, "invalid clever_radius -1.0; choose a number > 0"),
        ("clever_beta", float("inf"), "invalid clever_beta inf"),
        ("clever_batches", 0, "invalid clever_batches 0; choose an integer >= 1"),
        ("clever_pool_factor", 2.5, "invalid clever_pool_factor 2.5"),
        ("bound_radius", 0.0, "invalid bound_radius 0.0; choose a number > 0"),
        ("bound_samples", 0, "invalid bound_samples 0; choose an integer >= 1"),
    ],
)
def test_signal_config_refuses_bad_values_with_one_line(field, value, needle):
    with pytest.raises(ValueError) as info:
        SignalConfig(**{field: value}).validate()
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_signal_config_defaults_and_skipped_sections():
    SignalConfig().validate()
    assert SignalConfig(rhos=[0.1, 0.2]).rhos == (0.1, 0.2)  # stored as a tuple
    # a skipped section's options are not used, so not checked
    SignalConfig(
        clever_examples=0, clever_radius=-1.0, bound_examples=0, bound_samples=0
    ).validate()
    SignalConfig(signal_examples=None, clever_pool_factor=None, bound_radius=None).validate()


def test_signal_report_refuses_config_with_loose_options(tmp_path):
    f = relu_mlp(8, n_in=N, hidden=12, d=4)
    x = np.zeros((2, *SHAPE), np.float32)
    y = np.zeros(2, np.int32)
    out = tmp_path / "r"
    with pytest.raises(ValueError, match=r"config and the options eps, steps; give either") as e:
        signal_report(f, x, y, config=SignalConfig(), out_dir=out, eps=0.1, steps=2)
    assert "\n" not in str(e.value)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) epsilon"):
        signal_report(f, x, y, out_dir=out, epsilon=0.1)
    with pytest.raises(ValueError, match="unknown norm 'l1'"):  # loose options are validated
        signal_report(f, x, y, out_dir=out, norm="l1")
    with pytest.raises(ValueError, match="unknown norm 'l1'"):  # so is a config
        signal_report(f, x, y, config=SignalConfig(norm="l1"), out_dir=out)
    assert not out.exists()  # refused before any work


def test_clever_and_sampling_still_import_from_bounds():
    from qadv.evaluate import clever, sampling

    assert bounds.clever is clever.clever
    assert bounds.reverse_weibull_location is clever.reverse_weibull_location
    assert bounds.lp_norm is sampling.lp_norm and bounds.sample_ball is sampling.sample_ball
    assert all(hasattr(bounds, name) for name in bounds.__all__)
