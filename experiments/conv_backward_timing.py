"""Conv2d backward on the CPU: im2col (unfold + matmul, fold) against forward-convolution primitives.

Both variants compute the same two gradients of y = conv2d(x, W):

    dL/dx = conv_transpose2d(dL/dy, W)          (the adjoint of the convolution)
    dL/dW = correlation of x with dL/dy          (summed over the batch)

* ``im2col``:  cols = unfold(x) (N, C·kh·kw, L);  dL/dW = Σ_N dL/dy · colsᵀ;  dL/dx = fold(Wᵀ · dL/dy)
* ``convprim``: dL/dx = conv_transpose2d(dL/dy, W, output_padding);  dL/dW = conv2d of x (channels and
  batch swapped) with dL/dy as the kernel, stride and dilation swapped, per group.

The layers are LeNet-5's two convolutions at batch 128. Only the backward is timed: both variants
get the same x, W and dL/dy; runs interleave (variant order alternating) and the medians are printed
with their ratio, next to torch's own autograd backward for scale. The variant that wins here is the
one kept in ``manualbp/functional/conv.py`` (convprim; the script checks that the package's
backward equals it exactly).

    python experiments/conv_backward_timing.py [--reps 50] [--threads 1]
                                               [--out experiments/results/conv_backward_timing.json]

writes the medians as JSON (``median_ms``, with ``meta``: the machine, the date, the load averages before and
after, the command; ``_common.machine_meta``) to ``--out`` as well (default: ``conv_backward_timing.json`` in a new temporary folder,
``manualbp-conv_backward_timing-*``, so a plain run leaves the tracked results alone), and prints where.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from _common import machine_meta, output_folder

import manualbp.functional as MF


def _pad_extra(x, padding):
    """Pad only the far-side excess of an asymmetric ("same", even kernel) padding."""
    (top, bottom), (left, right) = padding
    if bottom == top and right == left:
        return x
    return F.pad(x, (0, right - left, 0, bottom - top))


def backward_im2col(x, weight, grad_out, stride, padding, dilation, groups):
    """(dL/dx, dL/dW) for a batched 4-D x through unfold/matmul/fold."""
    (top, bottom), (left, right) = padding
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    g = grad_out.reshape(n, groups, o // groups, -1)  # (N, G, O/G, L)
    cols = F.unfold(_pad_extra(x, padding), (kh, kw), dilation, (top, left), stride)
    cols = cols.reshape(n, groups, cg * kh * kw, -1)  # (N, G, Cg·kh·kw, L)
    grad_w = g.matmul(cols.transpose(-1, -2)).sum(0).reshape(o, cg, kh, kw)
    w3 = weight.reshape(groups, o // groups, cg * kh * kw)
    grad_cols = w3.transpose(1, 2).matmul(g).reshape(n, c * kh * kw, -1)
    size = (h + bottom - top, w + right - left)
    grad_x = F.fold(grad_cols, size, (kh, kw), dilation, (top, left), stride)[..., :h, :w]
    return grad_x, grad_w


def backward_convprim(x, weight, grad_out, stride, padding, dilation, groups):
    """(dL/dx, dL/dW) for a batched 4-D x through conv_transpose2d and conv2d."""
    (top, _), (left, _) = padding
    n, _, h, w = x.shape
    o, cg, kh, kw = weight.shape
    ho, wo = grad_out.shape[2:]
    output_padding = tuple(
        size + hi - lo - ((out - 1) * s - 2 * lo + d * (k - 1) + 1)
        for size, (lo, hi), s, d, k, out in zip((h, w), padding, stride, dilation, (kh, kw), (ho, wo))
    )
    grad_x = F.conv_transpose2d(grad_out, weight, None, stride, (top, left), output_padding, groups, dilation)
    grad_x = grad_x[..., :h, :w]
    xp = _pad_extra(x, padding)
    hp, wp = xp.shape[2:]
    xg = xp.reshape(n, groups, cg, hp, wp).permute(2, 1, 0, 3, 4).reshape(cg, groups * n, hp, wp)
    gg = grad_out.reshape(n, groups, o // groups, ho, wo).permute(1, 2, 0, 3, 4).reshape(o, n, ho, wo)
    grad_w = F.conv2d(xg, gg, None, dilation, (top, left), stride, groups)[..., :kh, :kw].transpose(0, 1)
    return grad_x, grad_w


LAYERS = {
    "conv1 N=128 1->6 5x5 pad2 28x28": dict(n=128, c=1, o=6, k=5, pad=2, hw=28),
    "conv2 N=128 6->16 5x5 14x14": dict(n=128, c=6, o=16, k=5, pad=0, hw=14),
}


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="the JSON (default: in a new temporary folder)")
    opts = parser.parse_args(argv)
    out = opts.out or output_folder(None, "conv_backward_timing") / "conv_backward_timing.json"
    torch.set_num_threads(opts.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, {opts.reps} interleaved reps\n")
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "reps": opts.reps, "median_ms": {}}
    results["meta"] = machine_meta("conv_backward_timing.py", argv, reps=opts.reps)
    for name, cfg in LAYERS.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(cfg["n"], cfg["c"], cfg["hw"], cfg["hw"], generator=gen)
        weight = torch.randn(cfg["o"], cfg["c"], cfg["k"], cfg["k"], generator=gen)
        geometry = ((1, 1), ((cfg["pad"], cfg["pad"]),) * 2, (1, 1), 1)
        stride = geometry[0]
        y = F.conv2d(x, weight, None, stride, cfg["pad"])
        grad_out = torch.randn(y.shape, generator=gen)

        # Both variants agree with torch before they are timed.
        xr, wr = x.clone().requires_grad_(), weight.clone().requires_grad_()
        F.conv2d(xr, wr, None, stride, cfg["pad"]).backward(grad_out)
        # dL/dW sums N·H·W (1e5) products in float32, in another order than torch: its rounding scales with the
        # size of the gradient (entries of a few hundred), not of each entry (a near-cancelled one differed by 2e-3)
        grad_w_atol = 1e-5 * float(wr.grad.abs().max())
        for variant in (backward_im2col, backward_convprim):
            gx, gw = variant(x, weight, grad_out, *geometry)
            torch.testing.assert_close(gx, xr.grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(gw, wr.grad, rtol=1e-4, atol=grad_w_atol)

        # The package keeps convprim: its backward gives bit-for-bit the same gradients.
        xm, wm = x.clone().requires_grad_(), weight.clone().requires_grad_()
        kept = torch.autograd.grad(MF.conv2d(xm, wm, None, stride, cfg["pad"]), (xm, wm), grad_out)
        for got, want in zip(kept, backward_convprim(x, weight, grad_out, *geometry)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)

        def torch_backward(xr=xr, wr=wr, stride=stride, pad=cfg["pad"], grad_out=grad_out):
            out = F.conv2d(xr, wr, None, stride, pad)
            start = time.perf_counter()
            torch.autograd.grad(out, (xr, wr), grad_out)
            return time.perf_counter() - start

        args = (x, weight, grad_out, *geometry)
        runs = {
            "im2col": lambda args=args: _timed(lambda: backward_im2col(*args)),
            "convprim": lambda args=args: _timed(lambda: backward_convprim(*args)),
            "torch autograd": torch_backward,
        }
        for fn in runs.values():  # warm-up
            for _ in range(3):
                fn()
        times: dict[str, list[float]] = {key: [] for key in runs}
        order = list(runs)
        for rep in range(opts.reps):
            for key in order if rep % 2 == 0 else reversed(order):
                times[key].append(runs[key]())
        medians = {key: statistics.median(ts) * 1e3 for key, ts in times.items()}
        print(name)
        for key, ms in medians.items():
            q1, _, q3 = statistics.quantiles([t * 1e3 for t in times[key]], n=4)
            print(f"  {key:15s} median {ms:7.3f} ms   (IQR {q1:.3f}-{q3:.3f})")
        print(f"  im2col / convprim = {medians['im2col'] / medians['convprim']:.2f}\n")
        results["median_ms"][name] = medians
    results["meta"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
