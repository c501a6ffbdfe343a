"""The training adversary is a registry-built attack config: any registered gradient attack
with any registered temperature trains, and bad names get the registry's errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qadv.attacks import registry
from qadv.training import TrainConfig, build_train_step
from qadv.training.objectives import adversary_names, make_objective

EPS = 0.1


def _batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(n, 28, 28, 1)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, 10, size=n).astype(np.int32))


def _config(**adv):
    return TrainConfig(arch="mlp", arch_opts={"widths": (8,)}, adv_eps=EPS, lr=1e-2, **adv)


def _first_step_loss(config, x, y):
    _, state, step = build_train_step(config, steps_per_epoch=2)
    state = step(state, x, y, jnp.float32(1.0))
    first = state.summary()["loss"]
    state = step(state, x, y, jnp.float32(1.0))
    assert int(state.step) == 2 and np.isfinite(state.summary()["loss"])
    return first


@pytest.mark.parametrize(
    ("adv", "temperature", "kind"),
    [
        ("pgd", {"kind": "fixed", "beta": 0.5}, "fixed"),
        ("fgsm", "prop1", "prop1"),
        pytest.param("apgd-ce", {"kind": "njs", "rho": 0.05}, "njs", marks=pytest.mark.slow),
    ],
)
def test_any_gradient_attack_and_temperature_is_a_training_adversary(adv, temperature, kind):
    config = _config(adv=adv, adv_steps=2 if adv != "fgsm" else None, temperature=temperature)
    attack = config.adversary.attack
    assert attack == registry.make(
        {"pgd": "pgd"}.get(adv, adv),
        **dict(norm="linf", eps=EPS, temperature=attack.temperature),
        **({"steps": 2} if adv != "fgsm" else {}),
        **({"step_size": EPS / 4} if adv == "pgd" else {}),
    )
    assert attack.temperature.kind == kind
    assert TrainConfig.from_dict(config.to_dict()) == config

    x, y = _batch()
    perturb = make_objective(config.adversary, config.regularizer).perturb
    f = lambda z: z.reshape(z.shape[0], -1)[:, :10] * 3.0  # noqa: E731
    y_clean = jnp.argmax(f(x), axis=1).astype(jnp.int32)  # APGD leaves misclassified ones
    x_adv = perturb(f, x, y_clean, jax.random.key(0))
    delta = np.abs(np.asarray(x_adv) - np.asarray(x))
    assert delta.max() <= EPS + 1e-6 and delta.max() > 0

    # same seed, same batch: the attacked first step has a higher loss than the clean one
    clean = _first_step_loss(_config(), x, y)
    assert _first_step_loss(config, x, y) > clean


def test_a_default_temperature_serialises_as_its_name():
    """Configs that name a temperature store (and hash) exactly as before; options that
    differ from the defaults are stored in the registry's form."""
    want = {"name": "pgd", "eps": EPS, "step_size": None, "steps": None, "norm": "linf"}
    for given in ("hns", {"kind": "hns"}, registry.make_temperature("hns")):
        assert _config(adv="pgd", temperature=given).to_dict()["adversary"] == {
            **want,
            "temperature": "hns",
        }
    stored = _config(adv="pgd", temperature={"kind": "prop1", "rho": 0.05}).to_dict()
    assert stored["adversary"]["temperature"] == {"kind": "prop1", "rho": 0.05}


def test_fastat_takes_the_cyclic_schedule_unless_one_is_chosen():
    """FastAT is one FGSM step with a cyclic learning rate (Wong et al. 2020); a schedule
    the user names, and a stored config's, stays."""
    assert TrainConfig(adv="fastat").optim.schedule == "cyclic"
    assert TrainConfig(adversary={"name": "fastat"}, optim={"lr": 0.1}).optim.schedule == "cyclic"
    assert TrainConfig(adv="fastat", schedule="cosine").optim.schedule == "cosine"
    assert TrainConfig(adversary={"name": "fastat"}, optim={"schedule": "step"}).optim.schedule == (
        "step"
    )
    assert TrainConfig(adv="pgd").optim.schedule == TrainConfig().optim.schedule == "cosine"
    c = TrainConfig(adv="fastat")
    assert TrainConfig.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"adv": "trades"}, "unknown adversary 'trades'; choose one of: none, pgd, fastat, fgsm"),
        ({"adv": "square"}, "unknown adversary 'square'"),  # no gradient, no temperature
        (
            {"adv": "pgd", "temperature": "warm"},
            "unknown temperature 'warm'; choose one of: none, fixed, njs, hns, prop1",
        ),
        ({"adv": "pgd", "temperature": {"kind": "prop1", "rh": 0.1}}, "has no option 'rh'"),
        ({"adv": "pgd", "temperature": {"kind": "fixed", "beta": -1.0}}, "bad beta -1.0"),
    ],
)
def test_bad_adversary_names_get_the_registry_error(kw, match):
    with pytest.raises(ValueError, match=match) as info:
        _config(**kw)
    assert "\n" not in str(info.value)
    assert "apgd-ce" in adversary_names() and "square" not in adversary_names()
