"""
Write your own Function and verify it
=====================================

A new layer in manualbp is a ``torch.autograd.Function`` with its derivative written by hand. This page
writes one, softplus, checks it with the battery that checks every manualbp op (``manualbp.verify``), then
plants three typical bugs in it, one at a time, and shows which checks catch each and what they report.
"""

# %%
# The Function
# ------------
#
# Softplus is a smooth ReLU:
#
# .. math::
#
#    y = \operatorname{softplus}(x) = \log(1 + e^{x}), \qquad
#    \frac{dy}{dx} = \frac{e^{x}}{1 + e^{x}} = \sigma(x), \qquad
#    \frac{d^2 y}{dx^2} = \sigma(x)\,(1 - \sigma(x)) .
#
# It acts elementwise, so the backward pass multiplies the incoming gradient by the derivative,
# :math:`\partial L/\partial x = \partial L/\partial y \odot \sigma(x)`, and the forward-mode rule (``jvp``)
# multiplies the tangent of the input by it, :math:`\dot y = \sigma(x) \odot \dot x`.
#
# The forward pass computes :math:`\log(1 + e^{x})` as :math:`\max(x, 0) + \log(1 + e^{-|x|})`, the same
# number without overflow for large :math:`x`. ``setup_context`` saves :math:`x` twice: with
# ``save_for_backward`` for ``backward`` and with ``save_for_forward`` for ``jvp``. The backward is written
# with differentiable torch operations, so that autograd can differentiate it once more (second derivatives,
# ``gradgradcheck``). ``generate_vmap_rule = True`` lets ``torch.func.vmap`` batch it. The class follows the
# layout of every op in ``manualbp/functional``: shapes and formulas in the docstring, forward and backward
# side by side.
#
# ``@manualbp.function`` gives the class manualbp's machinery: ``Softplus.call(x)`` applies a twin without
# ``jvp`` while ``torch.compile`` traces (Dynamo refuses a Function that defines ``jvp``), a faster twin in
# eager mode and the class itself under ``torch.func`` transforms; ``Softplus.apply`` keeps torch's meaning.

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import manualbp
from manualbp.verify import Report, verify


@manualbp.function
class Softplus(torch.autograd.Function):
    """y = log(1 + e^x).   x, y: any shape.

    dL/dx = dL/dy ⊙ σ(x)          ẏ = σ(x) ⊙ ẋ          (σ(x) = 1 / (1 + e^-x))
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)  # for backward
        ctx.save_for_forward(x)  # for jvp

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * torch.sigmoid(x)

    @staticmethod
    def jvp(ctx, x_dot):
        (x,) = ctx.saved_tensors
        return x_dot * torch.sigmoid(x)


torch.manual_seed(0)
x = torch.randn(3, 4, requires_grad=True)
y = Softplus.call(x)
(grad,) = torch.autograd.grad(y.sum(), x)
print(type(y.grad_fn).__name__)
print(f"max |y - F.softplus(x)|  = {(y - F.softplus(x)).abs().max().item():.1e}")
print(f"max |dL/dx - sigmoid(x)| = {(grad - torch.sigmoid(x)).abs().max().item():.1e}")

# %%
# A few values agree. The battery checks much more than that.
#
# The battery
# -----------
#
# ``verify(function, reference, sample_inputs)`` runs every check on every sample and returns a report with
# one row per (sample, check). Here the function is ``Softplus.apply``, the reference is
# ``torch.nn.functional.softplus`` (any autograd implementation of the same mathematics will do) and there
# is one sample, a 3 x 4 tensor; each check casts it to the dtype it tests. What the checks compare:
#
# * ``forward``, ``backward_float64``, ``backward_float32``: the output and the gradient of the inputs, for a
#   random :math:`\partial L/\partial y`, against the reference's.
# * ``gradcheck``, ``gradgradcheck``: the first and second derivatives against finite differences of the
#   Function itself (torch's ``gradcheck`` and ``gradgradcheck``).
# * ``double_backward``: the second derivatives against the reference's.
# * ``forward_ad``: the ``jvp`` against the reference's forward-mode derivative.
# * ``vmap``, ``func_grad``: ``torch.func.vmap`` against a loop, ``torch.func.grad`` against the
#   reference's gradient, and the per-sample recipe ``vmap(grad(...))``.
# * ``noncontiguous_grad``, ``expanded_grad``, ``partial_requires_grad``: the backward given a strided or
#   broadcast :math:`\partial L/\partial y`, and with only some inputs requiring a gradient.
# * ``compile``, ``compile_dynamic``, ``export_dynamic``: ``torch.compile(fullgraph=True)``, with dynamic
#   shapes at two batch sizes, and ``torch.export``, each against eager mode.
# * ``memory_format``: channels-last inputs; ``autocast_cpu_bfloat16``, ``autocast_chain``: mixed
#   precision as in training, compared in bfloat16's tolerance.
#
# The columns ``max_abs_err`` and ``max_rel_err`` give the largest difference of the compared tensors. The
# first run compiles (a few seconds).

samples = [(torch.randn(3, 4),)]
report = verify(Softplus.apply, F.softplus, samples, name="Softplus")
print(report)
print("\npassed:", report.passed)

# %%
# Every check passes. The float64 rows agree to about :math:`10^{-16}` and the float32 rows to about
# :math:`10^{-7}` (``autocast_cpu_bfloat16`` among them: its inputs are float32, and under autocast softplus
# keeps computing in float32, as torch's does); ``autocast_chain``, whose inputs are bfloat16, agrees to
# about :math:`10^{-2}`. That is rounding in each dtype. The tolerances are per dtype
# (``manualbp.verify.DEFAULT_TOLERANCES``, replaced with ``tolerances=``).
#
# ``report.matrix()`` prints the same report with samples as rows and checks as columns, one cell per check,
# which is shorter when there are many samples; ``report.failures``, ``report.raise_if_failed()`` and
# ``report.to_json()`` are there for scripts.
#
# Three bugs
# ----------
#
# Each variant below is ``Softplus`` with one method changed. A subclass of a decorated Function is decorated
# again, so that it gets twins of its own.
#
# **A wrong derivative.** The backward multiplies by the second derivative,
# :math:`\sigma(x)(1 - \sigma(x))`, instead of the first, a slip of the kind a derivation on paper makes:


@manualbp.function
class WrongDerivative(Softplus):
    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad_out * s * (1 - s)  # bug: σ(x)(1 - σ(x)) is d²y/dx², not dy/dx


# %%
# **A** ``.detach()`` **in the backward.** The gradient is right, but ``x.detach()`` cuts it off from the
# graph: differentiated once more (``create_graph=True``, as a gradient penalty or a Hessian-vector product
# does), it gives 0 instead of :math:`\sigma(x)(1 - \sigma(x))`, with no error and no warning.


@manualbp.function
class Detached(Softplus):
    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * torch.sigmoid(x.detach())  # bug: the second derivative is lost


# %%
# **No** ``ctx.save_for_forward``. ``setup_context`` saves :math:`x` for the backward only. ``jvp`` reads
# ``ctx.saved_tensors`` as well, but in forward mode that holds only what ``save_for_forward`` saved.


@manualbp.function
class NoSaveForForward(Softplus):
    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)  # bug: no ctx.save_for_forward(x) for jvp


# %%
# The battery on each, the reports joined into one, and the outcome of every check, one column per variant:

bugs = (WrongDerivative, Detached, NoSaveForForward)
combined = Report(list(report.rows))  # the rows of the correct Softplus, from above
for bug in bugs:
    combined.extend(verify(bug.apply, F.softplus, samples, name=bug.__name__))

variants = list(dict.fromkeys(row.case for row in combined.rows))
checks = list(dict.fromkeys(row.check for row in combined.rows))
status = {(row.case, row.check): "FAIL" if row.status == "fail" else row.status for row in combined.rows}
width = max(map(len, variants)) + 2
print(f"{'check':<23}" + "".join(f"{v:<{width}}" for v in variants))
for check in checks:
    print(f"{check:<23}" + "".join(f"{status[v, check]:<{width}}" for v in variants))

# %%
# Each bug fails different checks, and the checks that pass say something too:
#
# * The **wrong derivative** fails every check that compares the gradient with the reference's, in every
#   dtype and layout. ``gradgradcheck`` passes: it differentiates the Function's own backward, which is
#   consistent with itself. ``vmap`` and the graph-capture checks pass: they compare the Function under a
#   transform with the same Function in eager mode. ``forward_ad`` passes because the ``jvp`` is still right,
#   so a wrong backward cannot hide behind a right forward mode, or the other way round.
# * The **detach** passes every first-order check and fails the two second-order ones.
# * The **missing save_for_forward** fails only ``forward_ad``.
#
# What the failing rows say:

for row in combined.failures:
    if row.case in ("Detached", "NoSaveForForward") or row.check in ("backward_float64", "gradcheck"):
        print(f"{row.case} / {row.check}:")
        print(f"    {row.detail}")
print(
    f"\n{len(combined.failures)} failing rows in all:",
    {v: sum(r.case == v for r in combined.failures) for v in variants},
)

# %%
# A failing row names the input, the position of its largest error and the two values there, the Function's
# and the reference's (for the wrong derivative, :math:`\sigma(x)(1 - \sigma(x))` against :math:`\sigma(x)`,
# each times the random :math:`\partial L/\partial y`). ``gradcheck`` and ``gradgradcheck`` report torch's own
# message. The crash in ``jvp`` (the ``Softplus.jvp`` that ``NoSaveForForward`` inherits) is reported with the
# ``ValueError`` it raised and what is missing: ``ctx.save_for_forward``.
#
# The second derivative the detach loses, drawn: :math:`d^2y/dx^2` computed by differentiating each
# Function's backward (``create_graph=True``), against torch's.


def second_derivative(function, x):
    x = x.clone().requires_grad_()
    (dy,) = torch.autograd.grad(function(x).sum(), x, create_graph=True)
    if not dy.requires_grad:  # nothing in dy depends on x
        return torch.zeros_like(x)
    (d2y,) = torch.autograd.grad(dy.sum(), x)
    return d2y


grid = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
(first,) = torch.autograd.grad(Softplus.apply(grid).sum(), grid)  # dy/dx from Softplus.backward
grid = grid.detach()
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
ax1.plot(grid, Softplus.apply(grid), label="y = softplus(x)")
ax1.plot(grid, first, label="dy/dx from Softplus.backward")
ax1.set_xlabel("x")
ax1.set_title("softplus and its derivative")
ax1.legend()
ax1.grid(alpha=0.3)
ax2.plot(grid, second_derivative(F.softplus, grid), lw=4, alpha=0.4, color="gray", label="torch")
ax2.plot(grid, second_derivative(Softplus.apply, grid), ls="--", label="Softplus")
ax2.plot(grid, second_derivative(Detached.apply, grid), label="Detached")
ax2.set_xlabel("x")
ax2.set_title(r"$d^2y/dx^2$ through each backward")
ax2.legend()
ax2.grid(alpha=0.3)
plt.show()

# %%
# ``gradcheck`` in full
# ---------------------
#
# ``gradcheck`` and ``gradgradcheck`` run in torch's fast mode by default: they compare :math:`u^\top J v`
# with its finite difference for random vectors :math:`u` and :math:`v`, one backward instead of one per
# output element. ``exhaustive=True`` compares every entry of the Jacobian instead (slower on large
# samples; ``manualbp verify --exhaustive`` on the command line). ``checks=`` runs only the checks named:

exhaustive = verify(
    Softplus.apply, F.softplus, samples, name="Softplus", checks=["gradcheck", "gradgradcheck"], exhaustive=True
)
print(exhaustive)

# %%
# In a test: the ``verify_function`` fixture
# ------------------------------------------
#
# Installing manualbp installs a pytest plugin with the fixture ``verify_function``: it runs ``verify`` with
# the same arguments (``exhaustive=True``, ``checks=``, ``tolerances=`` included), returns the report, and
# fails the test with the report's table when a check fails. No ``conftest.py`` is needed. Put the Function
# in a module of your package and the test next to your other tests:
#
# .. code-block:: python
#
#    # tests/test_softplus.py
#    import torch
#
#    from mypackage.ops import Softplus
#
#
#    def test_softplus(verify_function):
#        samples = [(torch.randn(3, 4),), (torch.randn(2, 5, 7),)]
#        verify_function(Softplus.apply, torch.nn.functional.softplus, samples)
#
#
#    def test_softplus_jacobian_in_full(verify_function):
#        verify_function(
#            Softplus.apply,
#            torch.nn.functional.softplus,
#            [(torch.randn(3, 4),)],
#            checks=["gradcheck", "gradgradcheck"],
#            exhaustive=True,
#        )
#
# Run with ``pytest tests/test_softplus.py``. On ``WrongDerivative`` the first test fails with the rows of
# the table above, for both samples.
