"""Kill-and-resume under SIGKILL, and files damaged mid-write.

Each command runs once uninterrupted (in this process), then again in a fresh folder
as a subprocess that is SIGKILLed at seeded random points after it starts writing; the
same command then runs to completion, and its files must equal the uninterrupted run's
(JSON up to timings and provenance, checkpoints bitwise). The default run holds one kill
per command that resumes in a few seconds; the chains of several kills are ``slow``.

A kill during a write must never leave a file that later loads as valid: truncated JSON
records, partial results, checkpoints and IDX files are refused with one line, or
recomputed.
"""

from __future__ import annotations

import gc
import gzip
import json
import shutil
import time

import numpy as np
import pytest
from faults import (
    assert_same_checkpoint,
    assert_same_json_files,
    kill_midway,
    qadv_argv,
)
from synthetic import write_mnist_like

from qadv.apps import cli

KILLS: list[str] = []  # every kill that landed mid-run and was resumed correctly


def _report(record_property, command: str, landed: int) -> None:
    KILLS.extend([command] * landed)
    record_property("kills_survived", landed)
    print(f"\n{command}: {landed} SIGKILL(s) survived ({len(KILLS)} in this session)")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A data folder and a trained checkpoint, both under one root (paths relative to it)."""
    root = tmp_path_factory.mktemp("faults")
    (root / "data").mkdir()
    write_mnist_like(root / "data", n_train=256, n_test=24, learnable=True)
    argv = [*_TRAIN, "--epochs", "2", "--batch-size", "32", "--out", str(root / "ckpt")]
    assert cli.main([*argv, "--data-dir", str(root / "data")]) == 0
    return root


_TRAIN = [
    "train",
    "--dataset",
    "mnist",
    "--arch",
    "mlp",
    "--set",
    'model.arch_opts={"widths":[16]}',
]
_TRAIN += ["--robust-examples", "0", "--no-progress"]

# name -> (argv with paths relative to a run folder beside data/ and ckpt/, output)
COMMANDS = {
    "train": (
        [
            *_TRAIN,
            *"--epochs 2 --batch-size 16 --train-examples 48 --checkpoint-every-steps 1".split(),
        ],
        "out",
    ),
    "attack": (
        "attack --checkpoint ../ckpt --attack pgd --temperature hns --steps 2 --n 24 "
        "--batch-size 2 --no-progress".split(),
        "out.json",
    ),
    "evaluate": (
        "evaluate --checkpoint ../ckpt --attacks fgsm,pgd,square --steps 2 --queries 5 "
        "--eps 0.1 --n 24 --batch-size 3 --no-progress".split(),
        "out.json",
    ),
    "masking": (
        "masking --checkpoint ../ckpt --n 4 --steps 1 --max-steps 2 --queries 2 "
        "--batch-size 2 --no-progress".split(),
        "out",
    ),
    "demo": ("demo --n 2 --epochs 1 --batch-size 2 --no-progress".split(), "out"),
}


def _argv(name: str) -> list[str]:
    argv, out = COMMANDS[name]
    return [*argv, "--out", out, "--data-dir", "../data"]


def _compare(name: str, ref, got) -> None:
    out = COMMANDS[name][1]
    if name in ("train", "demo"):
        runs = ["out"] if name == "train" else ["out/float", "out/bnn_wq"]
        for run in runs:
            assert_same_checkpoint(ref / run, got / run)
    if out.endswith(".json"):
        assert_same_json_files(ref, got, "out.json*")
    else:
        assert_same_json_files(ref / out, got / out)


def _kill_and_resume(base, name, monkeypatch, delays, *, within_ref: bool = False) -> int:
    """Reference run, then kills at ``delays`` (seconds after the first write), then the
    same command to completion; returns how many kills landed mid-run. ``within_ref``:
    where the reference run took less than the last delay, the delays are scaled to end
    at 80 % of its time (a fast machine finishes a small command before a fixed delay;
    the killed runs start without a compilation cache, so they take longer)."""
    ref, got = base / f"{name}-ref", base / f"{name}-killed"
    for folder in (ref, got):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    monkeypatch.chdir(ref)
    t0 = time.monotonic()
    assert cli.main(_argv(name)) == 0
    ref_s = time.monotonic() - t0
    if within_ref and delays and max(delays) > 0.8 * ref_s:
        delays = [d * 0.8 * ref_s / max(delays) for d in delays]
    landed = sum(kill_midway(qadv_argv(*_argv(name)), got, delay=d) for d in delays)
    monkeypatch.chdir(got)
    assert cli.main(_argv(name)) == 0
    _compare(name, ref, got)
    return landed


# train: killing and resuming training is also checked in the default run by
# test_train.py and test_robust_training.py (library level); the CLI kill is ``slow``
@pytest.mark.parametrize(
    "name", [pytest.param("train", marks=pytest.mark.slow), "attack", "evaluate"]
)
def test_one_kill_resumes_to_the_same_files(base, name, monkeypatch, record_property):
    delay = float(np.random.default_rng(list(name.encode())).uniform(0.0, 0.5))
    landed = _kill_and_resume(base, name, monkeypatch, [delay])
    _report(record_property, name, landed)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(COMMANDS))
def test_kills_at_random_points_resume_to_the_same_files(base, name, monkeypatch, record_property):
    rng = np.random.default_rng([7, *name.encode()])
    span = {"masking": 20.0, "demo": 60.0}.get(name, 2.0)
    delays = sorted(rng.uniform(0.0, span, size=4).tolist())
    landed = _kill_and_resume(base, name, monkeypatch, delays, within_ref=True)
    _report(record_property, name, landed)
    assert landed >= 1, f"no kill of {name} landed before it finished"


# ----------------------------------------------------------------------------- torn files


def _truncations(size: int, seed: int, count: int = 6) -> list[int]:
    """Byte offsets to cut a file at: empty, one byte short, and random in between."""
    rng = np.random.default_rng(seed)
    cuts = {0, size - 1, *rng.integers(1, max(size - 1, 2), size=count).tolist()}
    return sorted(c for c in cuts if 0 <= c < size)


def test_truncated_idx_files_are_refused(tmp_path, capsys):
    from qadv.data import load_split

    refused = 0
    for gz in (False, True):
        folder = tmp_path / f"gz{gz}"
        folder.mkdir()
        write_mnist_like(folder, n_train=4, n_test=3, gz=gz)
        for stem in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            path = folder / (stem + (".gz" if gz else ""))
            whole = path.read_bytes()
            raw = gzip.decompress(whole) if gz else whole
            for cut in _truncations(len(raw), seed=len(raw)):
                path.write_bytes(gzip.compress(raw[:cut]) if gz else raw[:cut])
                with pytest.raises(ValueError) as info:
                    load_split("mnist", "test", data_dir=folder)
                assert "\n" not in str(info.value) and str(folder) in str(info.value)
                refused += 1
            for cut in _truncations(len(whole), seed=1)[1:] if gz else []:  # a torn .gz stream
                path.write_bytes(whole[:cut])
                with pytest.raises(ValueError, match="IDX"):
                    load_split("mnist", "test", data_dir=folder)
                refused += 1
            path.write_bytes(whole)
    # and through the command line: one line, exit status 2
    (tmp_path / "gzFalse" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00")
    code = cli.main(
        ["eval", "--checkpoint", str(tmp_path), "--data-dir", str(tmp_path / "gzFalse")]
    )
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    print(f"\n{refused} truncated IDX files refused")


# checksums.json refuses torn files of the items a load reads before orbax opens them;
# should one reach orbax, its failed read leaves an unawaited coroutine and callbacks
# into a closed event loop behind
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_checkpoint_never_loads_other_weights(base, tmp_path):
    import jax

    from qadv import checkpoint

    ref = checkpoint.load_checkpoint(base / "ckpt")
    step = ref.metadata["step"]
    files = sorted(p for p in (base / "ckpt" / "checkpoints" / str(step)).rglob("*") if p.is_file())
    rng = np.random.default_rng(3)
    refused = same = 0
    for i in rng.permutation(len(files))[:8]:
        run = tmp_path / f"run{i}"
        shutil.copytree(base / "ckpt", run)
        rel = files[i].relative_to(base / "ckpt")
        data = files[i].read_bytes()
        cut = int(rng.integers(0, max(len(data), 1)))
        (run / rel).write_bytes(data[:cut])
        try:
            loaded = checkpoint.load_checkpoint(run)
        except ValueError as e:
            assert "\n" not in str(e)
            refused += 1
            continue
        # a load that succeeds must give exactly the saved model
        jax.tree.map(np.testing.assert_array_equal, loaded.variables, ref.variables)
        same += 1
    assert refused >= 1
    print(f"\ntruncated checkpoint files: {refused} refused, {same} harmless (same weights)")
    # collect those coroutines now, under this test's filter; one finalised later, during
    # another test, is ignored by name (pyproject.toml's filterwarnings)
    gc.collect()


def test_truncated_json_records_are_recomputed_or_skipped(base, tmp_path, monkeypatch, capsys):
    from qadv import records

    # cached_json: a torn file is recomputed, never returned
    path = tmp_path / "fact.json"
    records.cached_json(path, {"a": 1}, lambda: {"v": 41})
    whole = path.read_bytes()
    for cut in _truncations(len(whole.rstrip()), seed=5):
        path.write_bytes(whole[:cut])
        assert records.cached_json(path, {"a": 1}, lambda: {"v": 42}) == {"v": 42}
        path.write_bytes(whole)
    # a torn member record of an ensemble: the member is rerun, the result is unchanged
    monkeypatch.chdir(base)
    argv = ["evaluate", "--checkpoint", "ckpt", "--attacks", "fgsm,pgd", "--steps", "1"]
    argv += ["--eps", "0.1", "--n", "8", "--batch-size", "4", "--no-progress"]
    argv += ["--data-dir", "data", "--out", str(tmp_path / "e.json")]
    assert cli.main(argv) == 0
    full = json.loads((tmp_path / "e.json").read_text())
    member = sorted((tmp_path / "e.json.members").glob("*.json"))[0]
    text = member.read_bytes()
    member.write_bytes(text[: len(text) // 2])
    (tmp_path / "e.json").unlink()
    assert cli.main(argv) == 0
    again = json.loads((tmp_path / "e.json").read_text())
    assert again["examples"] == full["examples"]
    # `qadv table` skips a torn result file instead of reading it
    (tmp_path / "torn.json").write_bytes(text[: len(text) // 3])
    capsys.readouterr()
    assert cli.main(["table", str(tmp_path)]) == 0
    assert "torn" not in capsys.readouterr().out


def test_truncated_partial_results_are_refused_or_recomputed(base, tmp_path, monkeypatch):
    """A torn ``.partial.npz`` (the write is atomic, so only a damaged disk makes one)."""

    monkeypatch.chdir(base)
    out = tmp_path / "a.json"
    argv = ["attack", "--checkpoint", "ckpt", "--steps", "1", "--n", "8", "--batch-size", "2"]
    argv += ["--eps", "0.1", "--no-progress", "--data-dir", "data", "--out", str(out)]
    assert cli.main(argv) == 0
    full = json.loads(out.read_text())
    # a partial file from a run killed after its first batch
    from qadv.evaluate import core

    real, calls = core.execute, []

    def dies(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(core, "execute", dies)
    out.unlink()
    assert cli.main(argv) == 130
    monkeypatch.setattr(core, "execute", real)
    partial = tmp_path / "a.json.partial.npz"
    whole = partial.read_bytes()
    outcomes = {"refused": 0, "recomputed": 0}
    for cut in _truncations(len(whole), seed=11):
        partial.write_bytes(whole[:cut])
        code = cli.main(argv)
        if code == 2:
            outcomes["refused"] += 1
            continue
        assert code == 0
        assert json.loads(out.read_text())["examples"] == full["examples"]
        outcomes["recomputed"] += 1
    print(f"\ntorn partial results: {outcomes}")
