"""One config-file loader (:mod:`qadv.config_files`) behind ``qadv train --config`` and
``qadv study --config``: the same one-line errors, each naming the file."""

from __future__ import annotations

import pytest

from qadv.apps.study import load_study_config
from qadv.config_files import load_config_file
from qadv.training import load_config_file as load_train_config

# (function the file must define, how each command loads a file)
LOADERS = {
    "training": ("get_config", lambda path, **kw: load_train_config(path)),
    "study": ("config", lambda path, **kw: load_study_config(path, kw or None)),
}


@pytest.mark.parametrize("kind", LOADERS)
@pytest.mark.parametrize(
    ("body", "match"),
    [
        (None, r"{kind} config file '{path}' not found"),
        ("X = 1\n", r"{kind} config file {path} defines no {fn}\(\) function"),
        ("def {fn}(:\n", r"{kind} config file {path}: SyntaxError"),
        ("def {fn}():\n    raise ValueError('bad size')\n", r"{kind} config file {path}: bad size"),
    ],
)
def test_both_commands_report_the_same_errors(tmp_path, kind, body, match):
    fn, load = LOADERS[kind]
    path = tmp_path / "cfg.py"
    if body is not None:
        path.write_text(body.format(fn=fn))
    with pytest.raises(ValueError, match=match.format(kind=kind, path=path, fn=fn)) as info:
        load(path)
    assert "\n" not in str(info.value)


def test_options_are_checked_against_the_function(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text("def config(size='cpu'):\n    return {'size': size}\n")
    assert load_config_file(path, "config", kind="x", options={"size": "gpu"}) == {"size": "gpu"}
    with pytest.raises(ValueError, match=r"config\(\) takes no option 'colour'; its options: size"):
        load_config_file(path, "config", kind="x", options={"colour": "red"})
    path.write_text("def config(**options):\n    return options\n")
    assert load_config_file(path, "config", kind="x", options={"a": "1"}) == {"a": "1"}
