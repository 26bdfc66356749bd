"""The verify battery on users' Functions: right ones pass, each planted mistake is caught by the right check."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest
import torch

from manualbp.cli import main
from manualbp.verify import CPU_CHECKS, Report, verify

pytest_plugins = ["pytester"]


class Square(torch.autograd.Function):
    """y = x², dL/dx = 2x · dL/dy, ẏ = 2x ẋ."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad

    @staticmethod
    def jvp(ctx, tangent):
        (x,) = ctx.saved_tensors
        return 2 * x * tangent


class WrongDerivative(Square):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2.02 * x * grad


class ViewOnGradient(Square):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad.view(-1).view(x.shape)  # .view fails on a non-contiguous gradient


class WrongDoubleBackward(Square):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x.detach() * grad  # right first derivative, but its dependence on x is cut


class JvpWithoutSaveForForward(Square):
    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])  # jvp reads ctx.saved_tensors, but nothing went to save_for_forward


class NoJvp(Square):
    jvp = torch.autograd.Function.jvp


class GraphBreak(NoJvp):
    @staticmethod
    def forward(x):
        torch._dynamo.graph_break()  # as a print or a data-dependent branch would
        return x * x


def square(x: torch.Tensor) -> torch.Tensor:
    """The recommended entry point: Dynamo cannot trace a Function that defines jvp, so while
    torch.compile traces, call the same Function without it."""
    return (NoJvp if torch.compiler.is_compiling() else Square).apply(x)


class OldStyle(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * x * grad


SAMPLES = [(torch.randn(3, 4),), (torch.randn(5),)]


def _status(report: Report) -> dict[str, set[str]]:
    by_check: dict[str, set[str]] = {}
    for row in report.rows:
        by_check.setdefault(row.check, set()).add(row.status)
    return by_check


def test_a_correct_function_passes_every_cpu_check():
    report = verify(square, torch.square, SAMPLES)
    assert report.passed, str(report)
    assert {row.check for row in report.rows} >= set(CPU_CHECKS)
    assert all(row.status == "pass" for row in report.rows)
    assert len(report.rows) == 2 * len(CPU_CHECKS)


def test_wrong_derivative_is_caught_with_the_largest_error_and_where():
    report = verify(
        WrongDerivative.apply, torch.square, SAMPLES[:1], checks=["forward", "backward_float64", "gradcheck"]
    )
    status = _status(report)
    assert status == {"forward": {"pass"}, "backward_float64": {"fail"}, "gradcheck": {"fail"}}
    row = next(r for r in report.rows if r.check == "backward_float64")
    assert math.isclose(row.max_rel_err, 0.01, rel_tol=1e-6)
    assert row.detail.startswith("largest error in grad of input 0 at (")


def test_view_on_a_noncontiguous_gradient_is_caught_by_the_strided_checks():
    status = _status(verify(ViewOnGradient.apply, torch.square, SAMPLES[:1]))
    assert status["backward_float64"] == {"pass"}
    assert status["noncontiguous_grad"] == {"fail"}


def test_wrong_double_backward_is_caught_by_the_second_order_checks_only():
    status = _status(verify(WrongDoubleBackward.apply, torch.square, SAMPLES[:1]))
    assert status["gradgradcheck"] == {"fail"} and status["double_backward"] == {"fail"}
    assert status["backward_float64"] == status["gradcheck"] == {"pass"}


def test_missing_jvp_and_vmap_support_are_unsupported_not_failures():
    no_jvp = verify(NoJvp.apply, torch.square, SAMPLES[:1])
    assert _status(no_jvp)["forward_ad"] == {"unsupported"} and no_jvp.passed
    assert "jvp" in next(r.detail for r in no_jvp.rows if r.check == "forward_ad")
    old = _status(verify(OldStyle.apply, torch.square, SAMPLES[:1]))
    assert old["vmap"] == old["func_grad"] == old["forward_ad"] == {"unsupported"}
    assert old["backward_float64"] == {"pass"}


def test_graph_break_fails_the_compile_check():
    report = verify(GraphBreak.apply, torch.square, SAMPLES[:1], checks=["forward", "compile"])
    assert _status(report) == {"forward": {"pass"}, "compile": {"fail"}}
    assert "graph break" in report.failures[0].detail


def test_a_graph_break_on_jvp_is_reported_with_the_fix_not_failed():
    """Dynamo refusing a Function because it defines jvp says nothing about its gradients."""
    report = verify(Square.apply, torch.square, SAMPLES[:1], checks=["forward", "compile"])
    assert _status(report) == {"forward": {"pass"}, "compile": {"graph_break"}} and report.passed
    detail = report.rows[1].detail
    assert "defines jvp" in detail and "@manualbp.function" in detail and "Square.call(...)" in detail
    assert "graph break" in str(report) and "graph break" in report.matrix()


def test_a_jvp_without_save_for_forward_is_told_what_is_missing():
    report = verify(JvpWithoutSaveForForward.apply, torch.square, SAMPLES[:1], checks=["forward_ad"])
    (row,) = report.rows
    assert row.status == "fail" and row.detail.startswith("ValueError: not enough values to unpack")
    assert "jvp: ctx.saved_tensors is empty" in row.detail and "add ctx.save_for_forward(...)" in row.detail


def test_report_table_json_and_raise():
    report = verify(
        WrongDerivative.apply, torch.square, SAMPLES[:1], checks=["forward", "backward_float64"], name="mine"
    )
    table = str(report)
    assert table.splitlines()[0].split() == ["case", "check", "status", "max_abs_err", "max_rel_err", "detail"]
    assert "mine  backward_float64  FAIL" in table
    rows = json.loads(report.to_json())
    assert [r["status"] for r in rows] == ["pass", "fail"] and rows[1]["max_abs_err"] > 0
    with pytest.raises(AssertionError, match="backward_float64"):
        report.raise_if_failed()
    assert "FAIL" in report.matrix()


def test_modules_sample_callables_and_tolerances():
    torch.manual_seed(0)
    layer, twin = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)  # twin gets layer's state
    report = verify(layer, twin, lambda dtype, device: [(torch.randn(2, 4, dtype=dtype, device=device),)])
    assert report.passed and {"weight", "bias"} <= {r.detail for r in report.rows} | {"weight", "bias"}

    nearly = lambda x: x * x * (1 + 1e-6)  # noqa: E731
    assert not verify(nearly, torch.square, SAMPLES[:1], checks=["forward"]).passed
    loose = {torch.float64: (1e-5, 1e-5)}
    assert verify(nearly, torch.square, SAMPLES[:1], checks=["forward"], tolerances=loose).passed
    with pytest.raises(ValueError, match="unknown check"):
        verify(Square.apply, torch.square, SAMPLES, checks=["speed"])


def test_the_verify_command_prints_the_matrix_and_writes_json(tmp_path, capsys):
    path = tmp_path / "rows.json"
    assert main(["verify", "--op", "mse_loss-sum", "--op", "flatten-all", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["case", "forward", "backward_float64"]
    assert "mse_loss-sum" in out and "flatten-all" in out and "0 fail" in out
    rows = json.loads(path.read_text())
    assert {r["case"] for r in rows} == {"mse_loss-sum", "flatten-all"}
    with pytest.raises(SystemExit):
        main(["verify", "--op", "no-such-op"])


def test_gradcheck_runs_in_fast_mode_unless_exhaustive(monkeypatch):
    """torch's fast mode (random projections of the Jacobian) by default; every entry with ``exhaustive``."""
    modes = []
    for name in ("gradcheck", "gradgradcheck"):
        original = getattr(torch.autograd, name)
        monkeypatch.setattr(
            torch.autograd, name, lambda *a, original=original, **k: modes.append(k["fast_mode"]) or original(*a, **k)
        )
    assert verify(Square.apply, torch.square, SAMPLES[:1], checks=["gradcheck", "gradgradcheck"]).passed
    assert verify(
        Square.apply, torch.square, SAMPLES[:1], checks=["gradcheck", "gradgradcheck"], exhaustive=True
    ).passed
    assert modes == [True, True, False, False]


@pytest.mark.parametrize("exhaustive", [False, True])
def test_both_gradcheck_modes_catch_a_wrong_jacobian(exhaustive):
    report = verify(WrongDerivative.apply, torch.square, SAMPLES[:1], checks=["gradcheck"], exhaustive=exhaustive)
    assert report.rows[0].status == "fail"


def test_the_verify_command_in_two_processes_prints_the_same_matrix_without_warnings(capsys):
    """``--jobs 2`` spreads the cases over two processes, in order; the ops' own warnings (conv2d with
    padding='same' and an even kernel) are not findings and are not printed."""
    args = ["verify", "--op", "conv2d-same-even_kernel", "--op", "flatten-all", "--check", "forward", "--check", "vmap"]
    assert main([*args, "--jobs", "1"]) == 0
    serial = capsys.readouterr()
    assert main([*args, "--jobs", "2", "--exhaustive"]) == 0
    parallel = capsys.readouterr()
    assert parallel.out == serial.out
    assert serial.err == parallel.err == ""
    with pytest.raises(SystemExit):
        main([*args, "--jobs", "0"])


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_the_verify_command_shows_progress_on_a_terminal_only(monkeypatch, capsys):
    args = ["verify", "--op", "mse_loss-sum", "--op", "flatten-all", "--check", "forward"]
    assert main(args) == 0
    assert capsys.readouterr().err == ""  # piped: nothing but the matrix on stdout
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(args) == 0
    bar = terminal.getvalue()
    assert "1/2" in bar and "flatten-all" in bar  # cases done / total, and the op being checked
    assert "case" in capsys.readouterr().out


def test_the_pytest_fixture_fails_a_test_with_the_table(pytester):
    pytester.makepyfile(
        """
        import torch

        class Twice(torch.autograd.Function):
            generate_vmap_rule = True

            @staticmethod
            def forward(x):
                return 2 * x

            @staticmethod
            def setup_context(ctx, inputs, output):
                pass

            @staticmethod
            def backward(ctx, grad):
                return 3 * grad  # wrong

        def test_twice(verify_function):
            checks = ["forward", "backward_float64", "compile"]
            verify_function(Twice.apply, lambda x: 2 * x, [(torch.randn(4),)], checks=checks)

        def test_twice_forward(verify_function):
            report = verify_function(Twice.apply, lambda x: 2 * x, [(torch.randn(4),)], checks=["forward"])
            assert report.passed
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*1 check(s) failed*", "*backward_float64*FAIL*", "*compile*pass*"])
    assert "torch.__trace" not in result.stdout.str()  # torch's structured compile trace stays out of the log


def test_the_vmap_check_batches_integer_inputs_too():
    """An op that reads an integer input's values with .item() cannot run under vmap once that input is
    batched, as a class target is in the per-sample-gradient recipe: the check must see it."""

    def scale_by_largest_target(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x * target.max().item()

    def reference(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return x * target.max()

    report = verify(scale_by_largest_target, reference, [(torch.randn(3), torch.tensor([1, 2, 0]))], checks=["vmap"])
    (row,) = report.rows
    assert row.status == "fail" and ".item()" in row.detail
