"""Running a study: every cell measured in turn, then the table and plots."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qadv import records
from qadv.apps.study.config import StudyConfig
from qadv.apps.study.measure import _cell_spec, _check_model, _Data, _measure_cell
from qadv.apps.study.output import _write_report


def run_study(
    config: StudyConfig,
    out_dir: str | Path,
    *,
    only: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    store: str | Path | None = None,
) -> dict[str, Any]:
    """Train and measure every cell (or those in ``only``), then write the report.

    Args:
        config: the study.
        out_dir: folder for runs, cell records, ``study.md``, ``study.json`` and plots.
        only: names of the cells to run now; the report still lists every cell that has
            a record.
        data_dir: IDX folder or tfds data dir (see :func:`qadv.data.load_split`).
        progress: show progress bars.
        store: folder of training runs shared between studies (a run's folder name is
            keyed by the hash of its training config, so equal configs train once);
            ``None``: ``out_dir/runs``.

    Returns:
        The content of ``study.json``: the config, the table (``header``, ``rows``), each
        cell's record (``cells``), ``complete``/``missing`` cell names, plot files,
        wall time and environment.
    """
    from tqdm.auto import tqdm

    t0 = time.time()
    out_dir = Path(out_dir)
    cells = config.select(only)
    for cell in cells:
        _check_model(cell)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = _Data(data_dir)
    bar = tqdm(cells, desc="study", unit="cell", disable=not progress, dynamic_ncols=True)
    log = tqdm.write if progress else (lambda _msg: None)
    for cell in bar:
        bar.set_postfix_str(cell.name)
        _measure_cell(
            cell,
            config.eval,
            out_dir,
            loader,
            progress=progress,
            log=log,
            runs_dir=None if store is None else Path(store),
            surrogate=config.surrogate_cell(),
        )
    bar.close()
    cell_records = {}
    for cell in config.cells:
        path = out_dir / "cells" / f"{cell.name}.json"
        if path.exists():
            try:
                rec = records.read_json(path)
            except (OSError, ValueError):
                continue
            if rec.get("spec") == _cell_spec(cell, config.eval, config.surrogate_cell()):
                cell_records[cell.name] = rec
    return _write_report(config, cell_records, out_dir, time.time() - t0)
