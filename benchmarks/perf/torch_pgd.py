"""qadv's PGD-20 against a plain PyTorch PGD loop on the same ResNet-18, weights and batch.

What users would otherwise write: the PGD loop of torchattacks (random start in the
ε-ball, then ``steps`` times: cross-entropy, ``torch.autograd.grad`` with respect to the
images, a signed step of ``η``, projection onto the ball and [0, 1]), on a PyTorch
ResNet-18 with the CIFAR stem, in eval mode. qadv's side is ``qadv.attacks.pgd`` (one
compiled program) on qadv's ``resnet18``. The PyTorch network is built to be the same
function: the same layers in the same order, qadv's random-init weights copied in
(HWIO → OIHW), and the two networks' logits are checked to agree before anything is
timed (the record holds the largest difference). Both attack the same images with the
same ε = 8/255, η = ε/4 and steps; each is called once to warm up, then ``--repeats``
times round-robin. Options that a GPU run would use: ``--device cuda``,
``--channels-last`` (PyTorch) and ``--bf16`` (PyTorch autocast to bfloat16; qadv's
``compute_dtype="bfloat16"`` model, float32 logits and attack arithmetic).

PyTorch is optional (``pip install 'qadv[peers]'``; on this project's CPU machines
``pip install torch==2.13.0`` takes the CPU build from disk): without it this prints one
line and writes a record that says ``skipped``.

Run::

    python benchmarks/perf/torch_pgd.py --batch 32 128 --repeats 3
"""

from __future__ import annotations

import common
import jax
import numpy as np

from qadv import attacks

MISSING = "PyTorch is not installed: pip install 'qadv[peers]'"


def torch_resnet18(variables, classes: int):
    """A PyTorch ResNet-18 (CIFAR stem) computing qadv's ``resnet18`` with ``variables``."""
    import torch
    from torch import nn

    params = jax.tree.map(lambda a: np.array(a, np.float32), variables["params"])
    stats = jax.tree.map(lambda a: np.array(a, np.float32), variables["batch_stats"])

    def conv(p, stride):
        k = p["kernel"]  # (kh, kw, in, out)
        c = nn.Conv2d(k.shape[2], k.shape[3], k.shape[0], stride, k.shape[0] // 2, bias=False)
        c.weight.data = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
        return c

    def bn(p, s):
        b = nn.BatchNorm2d(len(s["mean"]), eps=1e-5)
        b.weight.data, b.bias.data = torch.from_numpy(p["scale"]), torch.from_numpy(p["bias"])
        b.running_mean.data = torch.from_numpy(s["mean"])
        b.running_var.data = torch.from_numpy(s["var"])
        return b

    class Block(nn.Module):
        def __init__(self, p, s, stride):
            super().__init__()
            self.c1, self.b1 = conv(p["QConv_0"], stride), bn(p["BatchNorm_0"], s["BatchNorm_0"])
            self.c2, self.b2 = conv(p["QConv_1"], 1), bn(p["BatchNorm_1"], s["BatchNorm_1"])
            self.short = nn.Identity()
            if "QConv_2" in p:
                self.short = nn.Sequential(
                    conv(p["QConv_2"], stride), bn(p["BatchNorm_2"], s["BatchNorm_2"])
                )

        def forward(self, x):
            h = torch.relu(self.b1(self.c1(x)))
            return torch.relu(self.b2(self.c2(h)) + self.short(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = conv(params["QConv_0"], 1)
            self.bn = bn(params["BatchNorm_0"], stats["BatchNorm_0"])
            strides = [1, 1, 2, 1, 2, 1, 2, 1]
            self.blocks = nn.Sequential(
                *(
                    Block(params[f"BasicBlock_{i}"], stats[f"BasicBlock_{i}"], s)
                    for i, s in enumerate(strides)
                )
            )
            d = params["QDense_0"]
            self.fc = nn.Linear(d["kernel"].shape[0], classes)
            self.fc.weight.data = torch.from_numpy(np.ascontiguousarray(d["kernel"].T))
            self.fc.bias.data = torch.from_numpy(d["bias"])

        def forward(self, x):  # x: (B, C, H, W) in [0, 1]; qadv's normalisation is (0, 1)
            h = torch.relu(self.bn(self.stem(x)))
            return self.fc(self.blocks(h).mean((2, 3)))

    return Net().eval()


def torch_pgd(model, x, y, *, eps: float, step: float, steps: int, bf16: bool, device: str):
    """torchattacks' PGD (L∞, random start) in plain PyTorch; returns the adversarial batch."""
    import torch
    import torch.nn.functional as F

    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x_adv).float(), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + step * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def run_case(bench, model, batch: int, args) -> dict:
    import torch

    x, y = bench.batch(batch)
    eps, step = bench.eps, bench.eps / 4
    dev = torch.device(args.device)
    tx = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(dev)
    ty = torch.from_numpy(np.asarray(y).astype(np.int64)).to(dev)
    if args.channels_last:
        tx = tx.contiguous(memory_format=torch.channels_last)
    key = jax.random.key(0)

    def qadv_call():
        r = attacks.pgd(bench.logits_fn, x, y, key=key, eps=eps, step_size=step, steps=args.steps)
        return jax.block_until_ready(r)

    def torch_call():
        out = torch_pgd(
            model, tx, ty, eps=eps, step=step, steps=args.steps, bf16=args.bf16, device=dev.type
        )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return out

    timings = dict(
        zip(
            ("qadv", "pytorch"),
            common.time_calls([qadv_call, torch_call], args.repeats),
            strict=True,
        )
    )
    rows = {}
    for name, t in timings.items():
        adv = np.asarray(
            t.result if name == "qadv" else t.result.cpu().numpy().transpose(0, 2, 3, 1)
        )
        acc = float(np.mean(common.predictions(bench.logits_fn, adv) == np.asarray(y)))
        dist = float(np.abs(adv - np.asarray(x)).max())
        rows[name] = {**t.as_dict(items=batch), "robust_accuracy": acc, "linf": dist}
    return {
        "batch": batch,
        "steps": args.steps,
        "eps": eps,
        "step_size": step,
        "attacks": rows,
        "speed_qadv_over_pytorch": timings["pytorch"].median_s / timings["qadv"].median_s,
    }


def logit_difference(model, logits_fn, x, device: str) -> float:
    """The largest |Δlogit| between the PyTorch ``model`` and qadv's ``logits_fn`` on the
    NHWC images ``x``; exits with one line if they are not the same network."""
    import torch

    with torch.no_grad():
        t_logits = model(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy()).to(device))
    j_logits = np.asarray(logits_fn(x))
    diff = float(np.abs(t_logits.float().cpu().numpy() - j_logits).max())
    if diff > 1e-3 * max(float(np.abs(j_logits).max()), 1.0):
        raise SystemExit(f"the PyTorch network differs from qadv's: max |Δlogit| {diff:.3g}")
    return diff


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("torch_pgd", __doc__, checkpoint=False)
    p.add_argument("--batch", nargs="+", type=int, default=[32, 128])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--device", default="cpu", help="PyTorch device: cpu or cuda")
    p.add_argument("--channels-last", action="store_true", help="PyTorch channels_last")
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute in both")
    args = p.parse_args(argv)
    rec = common.Record("torch_pgd", argv)
    torch, skipped = rec.import_peer("torch", MISSING, args.out)
    if skipped is not None:
        return skipped
    torch.manual_seed(0)
    bench = common.load_bench("resnet18", n=max(args.batch))
    model = torch_resnet18(bench.logits_fn.args[0], classes=10).to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, _ = bench.batch(min(8, max(args.batch)))
    diff = logit_difference(model, bench.logits_fn, x, args.device)
    cases = []
    if args.bf16:  # qadv: bfloat16 weights and activations, float32 logits and attack
        from qadv.models import with_compute_dtype

        bench.logits_fn = with_compute_dtype(bench.logits_fn, "bfloat16")
    for b in args.batch:
        common.log(f"resnet18 batch {b} ...")
        cases.append(run_case(bench, model, b, args))
    common.print_table(
        [
            "batch",
            "qadv images/s",
            "PyTorch images/s",
            "qadv / PyTorch speed",
            "robust acc. qadv / PyTorch",
        ],
        [
            [
                c["batch"],
                common.fmt(c["attacks"]["qadv"]["images_per_s"]),
                common.fmt(c["attacks"]["pytorch"]["images_per_s"]),
                f"{c['speed_qadv_over_pytorch']:.2f}",
                f"{c['attacks']['qadv']['robust_accuracy']:.3f} / "
                f"{c['attacks']['pytorch']['robust_accuracy']:.3f}",
            ]
            for c in cases
        ],
    )
    return rec.save(
        {
            "description": "PGD-20 L∞ images/s: qadv.attacks.pgd against a plain PyTorch loop "
            "(torchattacks' algorithm) on the same ResNet-18 weights and images",
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "device": args.device,
            "channels_last": args.channels_last,
            "bf16": args.bf16,
            "model": bench.info,
            "max_logit_difference": diff,
            "repeats": args.repeats,
            "cases": cases,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
