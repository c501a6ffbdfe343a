"""One table of a ``benchmarks/gpu/run.sh`` run: ``OUT/summary.json`` and ``OUT/summary.md``.

Reads the records the script wrote (missing ones are listed as such) and reports: the
demo's wall time cold and warm; ResNet-18 PGD-20 images/s per batch in float32 and
bfloat16, the PGD++ NJS and HNS time ratios, and the fraction of the device's measured
matrix rate (``peak.json``) that PGD reaches, counting 2 × 20 × 2 × 0.555 GMAC ≈ 44 GFLOP
per PGD-20 image (a forward and an input-gradient backward pass per step); HNS at d = 1000
with top-k; qadv against the PyTorch loop.

    python benchmarks/gpu/summarize.py results/gpu/run
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from qadv import records

GFLOP_PER_PGD20_IMAGE = 2 * 20 * 2 * 0.555


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _demo(path: Path) -> dict | None:
    try:
        m = re.search(r"demo rc=(\d+) wall_s=(\d+)", path.read_text())
    except OSError:
        return None
    return {"rc": int(m.group(1)), "wall_s": int(m.group(2))} if m else None


def summarize(out: Path) -> dict:
    s: dict = {"demo": {k: _demo(out / f"demo_{k}.log") for k in ("cold", "warm")}}
    peak = _json(out / "peak.json") or {}
    s["peak"] = peak
    s["throughput"] = []
    for tag, key in (("f32", "float32_tflops"), ("bf16", "bfloat16_tflops")):
        rec = _json(out / f"throughput_{tag}.json")
        for c in (rec or {}).get("cases", []):
            ips = c["attacks"]["pgd"]["images_per_s"]
            tflops = ips * GFLOP_PER_PGD20_IMAGE * c["steps"] / 20 / 1e3
            s["throughput"].append(
                {
                    "dtype": tag,
                    "batch": c["batch"],
                    "pgd_images_per_s": ips,
                    "njs_over_pgd": c["ratio_njs_over_pgd"],
                    "hns_over_pgd": c["ratio_hns_over_pgd"],
                    "tflops": tflops,
                    "fraction_of_peak": tflops / peak[key] if peak.get(key) else None,
                }
            )
    d = _json(out / "d1000.json")
    s["d1000"] = d.get("cases") if d else None
    s["torch"] = []
    for name in ("torch_pgd.json", "torch_pgd_bf16.json"):
        rec = _json(out / name)
        for c in (rec or {}).get("cases", []):
            s["torch"].append(
                {
                    "bf16": rec["bf16"],
                    "batch": c["batch"],
                    "qadv_images_per_s": c["attacks"]["qadv"]["images_per_s"],
                    "pytorch_images_per_s": c["attacks"]["pytorch"]["images_per_s"],
                    "qadv_over_pytorch": c["speed_qadv_over_pytorch"],
                }
            )
    return s


def markdown(s: dict) -> str:
    def f(v, d=3):
        return "–" if v is None else (f"{v:.{d}g}" if isinstance(v, float) else str(v))

    lines = ["# GPU run", ""]
    for k in ("cold", "warm"):
        d = s["demo"][k]
        lines.append(
            f"- demo, {k} cache: " + ("not run" if d is None else f"{d['wall_s']} s (rc {d['rc']})")
        )
    p = s["peak"]
    lines.append(
        f"- measured matmul rate: float32 {f(p.get('float32_tflops'))}, bfloat16 "
        f"{f(p.get('bfloat16_tflops'))} TFLOP/s"
    )
    tables = (
        (
            ["dtype", "batch", "PGD images/s", "NJS / PGD", "HNS / PGD", "TFLOP/s", "of peak"],
            [
                "dtype",
                "batch",
                "pgd_images_per_s",
                "njs_over_pgd",
                "hns_over_pgd",
                "tflops",
                "fraction_of_peak",
            ],
            s["throughput"],
        ),
        (
            ["PyTorch bf16", "batch", "qadv images/s", "PyTorch images/s", "qadv / PyTorch"],
            ["bf16", "batch", "qadv_images_per_s", "pytorch_images_per_s", "qadv_over_pytorch"],
            s["torch"],
        ),
    )
    for header, keys, rows in tables:
        lines += ["", records.format_table(header, [[f(r[k], 4) for k in keys] for r in rows])]
    lines += ["", f"d = 1000 cases: {len(s['d1000'] or [])} (see d1000.json)", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    out = Path((argv or sys.argv[1:])[0])
    s = summarize(out)
    (out / "summary.json").write_text(json.dumps(s, indent=1))
    (out / "summary.md").write_text(markdown(s))
    print(markdown(s))
    return s


if __name__ == "__main__":
    main()
