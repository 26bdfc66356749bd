"""scaled_dot_product_attention: what the op-case registry cannot say.

What is saved for the backward (no L×S tensor), the blocked loops against one block, the two backward paths
(first order from the saved O and ℓ, create_graph from a recomputation), dropout (reproducible from the seed,
equal to a reference built from the same mask), torch's errors, and hypothesis-drawn calls with several key
blocks against torch's math path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import manualbp.functional as MF
from manualbp.functional import attention as A
from manualbp.verify.case_makers import math_attention
from tests.fuzz.strategies import attention_calls

OP = MF.scaled_dot_product_attention


def _randn(*shape: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype)


def _leaves(*tensors: torch.Tensor | None) -> list[Any]:
    return [t.detach().clone().requires_grad_() if t is not None and t.is_floating_point() else t for t in tensors]


def _outputs_and_grads(fn: Callable[..., torch.Tensor], q, k, v, mask=None, **options: Any) -> list[torch.Tensor]:
    """The output and the gradients of every floating input under a fixed random dL/dy."""
    q, k, v, mask = _leaves(q, k, v, mask)
    out = fn(q, k, v, attn_mask=mask, **options)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    wrt = [t for t in (q, k, v, mask) if t is not None and t.requires_grad]
    return [out.detach(), *torch.autograd.grad(out, wrt, grad_out)]


# ---------------------------------------------------------------------------------------------------
# What is saved


def _saved(call: Callable[[], Any]) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        call()
    return saved


@pytest.mark.parametrize("mask_kind", ["none", "bool", "float", "causal"])
def test_saves_q_k_v_the_mask_as_given_o_and_lse_and_no_l_by_s_tensor(mask_kind: str) -> None:
    L, S = 5, 7
    q, k, v = _leaves(_randn(2, 3, L, 4), _randn(2, 3, S, 4), _randn(2, 3, S, 6))
    mask = {"none": None, "bool": torch.rand(L, S) < 0.7, "float": _randn(1, L, S), "causal": None}[mask_kind]
    saved = _saved(lambda: OP(q, k, v, attn_mask=mask, is_causal=mask_kind == "causal"))
    shapes = [tuple(t.shape) for t in saved]
    expected = [(2, 3, L, 4), (2, 3, S, 4), (2, 3, S, 6), *([tuple(mask.shape)] if mask is not None else [])]
    assert shapes == [*expected, (2, 3, L, 6), (2, 3, L)]
    for tensor in (q, k, v, *([mask] if mask is not None else [])):  # the inputs themselves, not copies
        assert any(t.untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr() for t in saved)
    assert not any(t.dim() >= 2 and t.shape[-2:] == (L, S) and t.numel() > L * S for t in saved)


def test_the_saved_bytes_do_not_grow_with_l_times_s() -> None:
    """Doubling L and S doubles what is saved (q, k, v, O, ℓ grow linearly); torch's math path quadruples its P."""

    def saved_bytes(n: int) -> int:
        q, k, v = _leaves(_randn(1, 2, n, 8), _randn(1, 2, n, 8), _randn(1, 2, n, 8))
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in _saved(lambda: OP(q, k, v))}
        return sum(storages.values())

    assert saved_bytes(256) == 2 * saved_bytes(128)


# ---------------------------------------------------------------------------------------------------
# Blocks


BLOCKED_CALLS = {
    "plain": lambda: (_randn(2, 2, 5, 3), _randn(2, 2, 9, 3), _randn(2, 2, 9, 4), None, {}),
    "bool_mask": lambda: (_randn(2, 2, 5, 3), _randn(2, 2, 9, 3), _randn(2, 2, 9, 4), torch.rand(2, 1, 5, 9) < 0.5, {}),
    "float_mask": lambda: (_randn(2, 2, 5, 3), _randn(2, 2, 9, 3), _randn(2, 2, 9, 4), _randn(5, 9), {}),
    "float_mask_column": lambda: (_randn(2, 2, 5, 3), _randn(2, 2, 9, 3), _randn(2, 2, 9, 4), _randn(5, 1), {}),
    "causal": lambda: (_randn(2, 2, 9, 3), _randn(2, 2, 7, 3), _randn(2, 2, 7, 4), None, {"is_causal": True}),
    "gqa": lambda: (_randn(2, 6, 5, 3), _randn(2, 3, 9, 3), _randn(2, 2, 9, 4), None, {"enable_gqa": True}),
    "broadcast_batch": lambda: (_randn(3, 2, 5, 3), _randn(1, 1, 9, 3), _randn(3, 1, 9, 4), None, {"scale": 0.4}),
    "spread": lambda: (_randn(2, 2, 5, 3) * 30, _randn(2, 2, 9, 3) * 30, _randn(2, 2, 9, 4), None, {}),
}


@pytest.mark.parametrize("make", BLOCKED_CALLS.values(), ids=BLOCKED_CALLS.keys())
def test_blocked_forward_and_backward_equal_one_block_and_torch(make: Callable[[], Any]) -> None:
    q, k, v, mask, options = make()
    with mock.patch.object(A, "BLOCK_SIZE", 2):  # 9 keys: 5 blocks, the last one short
        blocked = _outputs_and_grads(OP, q, k, v, mask, **options)
    whole = _outputs_and_grads(OP, q, k, v, mask, **options)
    assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    assert_close(blocked, _outputs_and_grads(math_attention, q, k, v, mask, **options))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # torch's forward AD, first use
@pytest.mark.parametrize("make", BLOCKED_CALLS.values(), ids=BLOCKED_CALLS.keys())
def test_blocked_jvp_and_second_derivatives_equal_torch(make: Callable[[], Any]) -> None:
    q, k, v, mask, options = make()
    floating = tuple(t for t in (q, k, v, mask) if t is not None and t.is_floating_point())
    tangents = tuple(torch.randn_like(t) for t in floating)

    def call(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def f(*ts: torch.Tensor) -> torch.Tensor:
            args = list(ts) + [mask] * (len(ts) == 3)
            return fn(*args[:3], attn_mask=args[3], **options)

        return f

    with mock.patch.object(A, "BLOCK_SIZE", 2):
        manual_jvp = torch.func.jvp(call(OP), floating, tangents)[1]
        reference_jvp = torch.func.jvp(call(math_attention), floating, tangents)[1]
        assert_close(manual_jvp, reference_jvp)

        def second(fn: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, ...]:
            leaves = _leaves(*floating)
            out = call(fn)(*leaves)
            grads = torch.autograd.grad(out, leaves, torch.ones_like(out) * 0.3, create_graph=True)
            probe = sum((g * g).sum() for g in grads)
            return torch.autograd.grad(probe, leaves)

        assert_close(second(OP), second(math_attention))


def test_gradcheck_and_gradgradcheck_over_several_blocks() -> None:
    q, k, v, mask = _leaves(_randn(1, 2, 3, 2), _randn(1, 1, 5, 2), _randn(1, 1, 5, 3), _randn(3, 5))
    with mock.patch.object(A, "BLOCK_SIZE", 2):
        fn = lambda *ts: OP(*ts[:3], attn_mask=ts[3], enable_gqa=True)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (q, k, v, mask))
        assert torch.autograd.gradgradcheck(fn, (q, k, v, mask))


def test_first_order_backward_from_saved_state_equals_the_recomputing_one() -> None:
    """Plain backward reads the saved O and ℓ; under create_graph they are recomputed from q, k, v: same numbers."""
    q, k, v = _leaves(_randn(2, 2, 4, 3), _randn(2, 2, 6, 3), _randn(2, 2, 6, 3))
    mask = torch.rand(4, 6) < 0.6
    with mock.patch.object(A, "BLOCK_SIZE", 4):
        out = OP(q, k, v, attn_mask=mask)
        grad_out = torch.randn_like(out)
        plain = torch.autograd.grad(out, (q, k, v), grad_out, retain_graph=True)
        recomputed = torch.autograd.grad(out, (q, k, v), grad_out, create_graph=True)
    assert_close(plain, recomputed, rtol=1e-13, atol=1e-13)


def test_a_fully_masked_row_gives_zeros_like_torchs_math_path() -> None:
    q, k, v = _randn(1, 2, 3, 4), _randn(1, 2, 5, 4), _randn(1, 2, 5, 4)
    mask = torch.rand(3, 5) < 0.7
    mask[1] = False
    manual = _outputs_and_grads(OP, q, k, v, mask)
    assert_close(manual, _outputs_and_grads(math_attention, q, k, v, mask))
    assert torch.equal(manual[0][..., 1, :], torch.zeros(1, 2, 4, dtype=torch.float64))
    assert torch.equal(manual[1][..., 1, :], torch.zeros(1, 2, 4, dtype=torch.float64))  # dL/dq of that row


@pytest.mark.parametrize("size", ["keys-0", "queries-0", "features-0"])
def test_empty_sizes_match_torch(size: str) -> None:
    shapes = {"keys-0": (3, 0, 4), "queries-0": (0, 5, 4), "features-0": (3, 5, 0)}[size]
    L, S, E = shapes
    q, k, v = _randn(2, L, E), _randn(2, S, E), _randn(2, S, 3)
    # E = 0: every score is an empty dot product, 0, so each row averages the values. torch 2.14's math path
    # gives that; 2.12's gives zeros: the reference is the formula itself, softmax(Q Kᵀ) V.
    reference = _softmax_of_scores if size == "features-0" else math_attention
    assert_close(_outputs_and_grads(OP, q, k, v), _outputs_and_grads(reference, q, k, v))


def _softmax_of_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: None) -> torch.Tensor:
    return torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_float32_like_torchs_math_path(dtype: torch.dtype) -> None:
    q, k, v = _randn(2, 2, 5, 8, dtype=dtype), _randn(2, 2, 7, 8, dtype=dtype), _randn(2, 2, 7, 8, dtype=dtype)
    manual = _outputs_and_grads(OP, q, k, v)
    assert [t.dtype for t in manual] == [dtype] * 4
    assert_close(manual, _outputs_and_grads(math_attention, q, k, v), rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------------------------------------------
# Dropout


def _reference_with_factors(q, k, v, factors: torch.Tensor, mask=None, **options: Any) -> torch.Tensor:
    """softmax(s · Q Kᵀ + M) ⊙ Z, times V, with autograd on plain torch ops (no fully masked row here)."""
    scale = options.get("scale") or q.shape[-1] ** -0.5
    if options.get("enable_gqa"):
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scores = q @ k.transpose(-2, -1) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else scores + mask
    return (torch.softmax(scores, -1) * factors) @ v


@pytest.mark.parametrize("block_size", [2, 128])
@pytest.mark.parametrize("options", [{}, {"enable_gqa": True}, {"float_mask": True}], ids=["plain", "gqa", "mask"])
def test_dropout_equals_a_reference_with_the_same_mask(block_size: int, options: dict[str, Any]) -> None:
    options = dict(options)
    mask = _randn(4, 7) if options.pop("float_mask", False) else None
    kv_heads = 2 if options.get("enable_gqa") else 4
    q, k, v = _randn(2, 4, 4, 3), _randn(2, kv_heads, 7, 3), _randn(2, kv_heads, 7, 5)
    p = 0.4
    with mock.patch.object(A, "BLOCK_SIZE", block_size):
        torch.manual_seed(3)
        seed = A._draw_seed()
        factors = A.dropout_factors((2, 4, 4, 7), p, seed, dtype=torch.float64)
        torch.manual_seed(3)  # the op draws the same seed
        manual = _outputs_and_grads(OP, q, k, v, mask, dropout_p=p, **options)
    reference = _outputs_and_grads(
        lambda *a, attn_mask, **o: _reference_with_factors(*a, factors, attn_mask, **o), q, k, v, mask, **options
    )
    assert_close(manual, reference)
    dropped = (factors == 0).double().mean().item()
    assert 0.2 < dropped < 0.6  # about p of the weights are dropped
    assert set(factors.unique().tolist()) == {0.0, 1 / (1 - p)}


def test_dropout_is_reproducible_under_manual_seed_and_differs_between_seeds() -> None:
    q, k, v = _randn(2, 2, 4, 3), _randn(2, 2, 6, 3), _randn(2, 2, 6, 3)

    def run(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return _outputs_and_grads(OP, q, k, v, dropout_p=0.5)

    with mock.patch.object(A, "BLOCK_SIZE", 2):
        first, again, other = run(0), run(0), run(1)
    assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first[0], other[0])


def test_dropout_gradcheck_gradgradcheck_and_jvp_with_the_seed_fixed() -> None:
    q, k, v = _leaves(_randn(1, 2, 3, 2), _randn(1, 2, 5, 2), _randn(1, 2, 5, 3))

    def fn(*ts: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(11)  # the same seed, so the same masks, on every call
        return OP(*ts, dropout_p=0.3)

    with mock.patch.object(A, "BLOCK_SIZE", 2):
        assert torch.autograd.gradcheck(fn, (q, k, v))
        assert torch.autograd.gradgradcheck(fn, (q, k, v))
        torch.manual_seed(11)
        factors = A.dropout_factors((1, 2, 3, 5), 0.3, A._draw_seed(), dtype=torch.float64)
        tangents = tuple(torch.randn_like(t) for t in (q, k, v))
        primals = tuple(t.detach() for t in (q, k, v))
        manual = torch.func.jvp(fn, primals, tangents)[1]
        reference = torch.func.jvp(lambda *ts: _reference_with_factors(*ts, factors), primals, tangents)[1]
    assert_close(manual, reference)


def test_dropout_p1_drops_everything_and_negative_p_nothing_as_torch() -> None:
    q, k, v = _randn(2, 2, 3, 4), _randn(2, 2, 5, 4), _randn(2, 2, 5, 4)
    dropped = _outputs_and_grads(OP, q, k, v, dropout_p=1.0)
    assert all(torch.equal(t, torch.zeros_like(t)) for t in dropped)
    assert_close(_outputs_and_grads(OP, q, k, v, dropout_p=-0.1), _outputs_and_grads(math_attention, q, k, v))


# ---------------------------------------------------------------------------------------------------
# Errors


def _q(*shape: int) -> torch.Tensor:
    return _randn(*shape)


BAD_CALLS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "dtype-mismatch": ((_q(2, 2, 3, 4), _q(2, 2, 5, 4).float(), _q(2, 2, 5, 6)), {}),
    "integer-inputs": ((torch.ones(2, 3, 4, dtype=torch.long),) * 3, {}),
    "1-d": ((_q(4), _q(4), _q(4)), {}),
    "feature-mismatch": ((_q(2, 2, 3, 4), _q(2, 2, 5, 3), _q(2, 2, 5, 6)), {}),
    "sequence-mismatch": ((_q(2, 2, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 4, 6)), {}),
    "heads-mismatch": ((_q(2, 4, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)), {}),
    "batch-mismatch": ((_q(2, 2, 3, 4), _q(3, 2, 5, 4), _q(3, 2, 5, 6)), {}),
    "gqa-not-a-divisor": ((_q(2, 3, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)), {"enable_gqa": True}),
    "gqa-2-d": ((_q(3, 4), _q(5, 4), _q(5, 6)), {"enable_gqa": True}),
    "mask-and-causal": (
        (_q(2, 2, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)),
        {"attn_mask": torch.ones(3, 5) > 0, "is_causal": True},
    ),
    "mask-shape": ((_q(2, 2, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)), {"attn_mask": torch.ones(3, 4) > 0}),
    "mask-enlarges": ((_q(2, 2, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)), {"attn_mask": torch.ones(1, 1, 1, 3, 5) > 0}),
    "mask-1-d": ((_q(2, 2, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)), {"attn_mask": torch.ones(5) > 0}),
    "mask-integer": (
        (_q(2, 2, 3, 4), _q(2, 2, 5, 4), _q(2, 2, 5, 6)),
        {"attn_mask": torch.ones(3, 5, dtype=torch.long)},
    ),
    "mask-float64-for-float32": (
        (_q(2, 3, 4).float(), _q(2, 5, 4).float(), _q(2, 5, 6).float()),
        {"attn_mask": _q(3, 5)},
    ),
    "dropout-above-1": ((_q(2, 3, 4), _q(2, 5, 4), _q(2, 5, 6)), {"dropout_p": 1.5}),
    "device": ((_q(2, 3, 4), torch.empty(2, 5, 4, dtype=torch.float64, device="meta"), _q(2, 5, 6)), {}),
    "query-not-a-tensor": (([[1.0]], _q(2, 5, 4), _q(2, 5, 6)), {}),
    "is_causal-not-a-bool": ((_q(2, 3, 4), _q(2, 5, 4), _q(2, 5, 6)), {"is_causal": 1}),
}


@pytest.mark.parametrize("args, kwargs", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_torchs_exception_type_with_a_message_naming_the_op(args, kwargs) -> None:
    with pytest.raises(Exception) as torch_error:  # torch's exception type, read from the call
        F.scaled_dot_product_attention(*args, **kwargs)
    with pytest.raises(type(torch_error.value), match="scaled_dot_product_attention"):
        OP(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Drawn calls, several key blocks


@settings(max_examples=40, deadline=None)
@given(case=attention_calls(), block_size=st.integers(1, 3))
def test_drawn_calls_match_torchs_math_path_over_several_blocks(case, block_size: int) -> None:
    """The fuzz family's calls (tests/fuzz/strategies.py) with 1 to 3 keys per block: outputs and gradients."""
    with mock.patch.object(A, "BLOCK_SIZE", block_size):
        manual = _drawn(case.manual, case)
    assert_close(manual, _drawn(case.reference, case), equal_nan=True, msg=lambda m: f"{case}: {m}")


def _drawn(fn: Callable[..., torch.Tensor], case: Any) -> list[torch.Tensor]:
    leaves = {name: t.detach().clone().requires_grad_() for name, t in case.inputs.items()}
    out = fn(**leaves, **case.constants)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(case.seed), dtype=out.dtype)
    return [out.detach(), *torch.autograd.grad(out, list(leaves.values()), grad_out)]


# ---------------------------------------------------------------------------------------------------
# The benchmark script


def test_bench_attention_tiny_run_writes_its_rows_and_ratios(tmp_path, monkeypatch, capsys) -> None:
    import importlib
    import json
    import sys
    from pathlib import Path

    experiments = Path(__file__).resolve().parents[2] / "experiments"
    monkeypatch.syspath_prepend(str(experiments))
    for name in ("bench_attention", "_common"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    bench = importlib.import_module("bench_attention")
    path = tmp_path / "bench_attention.json"
    bench.main(
        ["--sizes", "128", "--features", "16", "--reps", "1", "--warmup", "0", "--mem-reps", "1", "--json", str(path)]
    )
    data = json.loads(path.read_text())
    methods = [row["method"] for row in data["rows"]]
    assert methods == ["manual", "flash", "math", "summary"]
    manual, flash, math, summary = data["rows"]
    assert manual["saved_bytes"] == flash["saved_bytes"] > 0  # q, k, v, O and one float32 per row, both
    assert math["saved_bytes"] > manual["saved_bytes"]  # torch's math path keeps the L×S weights
    assert all(row["peak_backward_bytes"] > 0 and row["ms"] > 0 for row in (manual, flash, math))
    assert summary["saved_target_met"] is True and summary["peak_target_met"] is None  # 128 < 2048: not judged
    assert data["meta"]["cpu"] and "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_compiled_with_dynamic_shapes_new_sequence_lengths_do_not_recompile() -> None:
    """Under torch.compile the keys are one block (``_blocks``): a loop over blocks would specialise the graph to S."""
    from torch.fx.experimental import _config as fx_config

    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k, v, m: OP(q, k, v, attn_mask=m), backend="aot_eager", fullgraph=True, dynamic=True
    )
    try:
        for index, (L, S) in enumerate(((3, 5), (4, 7), (6, 300))):
            q, k, v, mask = _randn(2, 2, L, 3), _randn(2, 2, S, 3), _randn(2, 2, S, 4), _randn(L, S)
            stance = torch.compiler.set_stance("fail_on_recompile") if index else contextlib.nullcontext()
            with stance, fx_config.patch(use_duck_shape=False):  # type: ignore[attr-defined]
                got = _outputs_and_grads(lambda *a, attn_mask: compiled(*a, attn_mask), q, k, v, mask)
            assert_close(got, _outputs_and_grads(OP, q, k, v, mask))
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_a_compiled_graph_saves_no_l_by_s_tensor_either(backend: str) -> None:
    """The backward recomputes S from s · Q (the forward scales Q Kᵀ), so torch.compile cannot merge the two and
    save the forward's S for the backward: only q, k, v, O, ℓ and the mask as given are saved."""
    L = S = 64
    q, k, v = _leaves(_randn(1, 2, L, 8), _randn(1, 2, S, 8), _randn(1, 2, S, 8))
    mask = torch.rand(L, S) < 0.7
    torch._dynamo.reset()
    try:
        compiled = torch.compile(lambda q, k, v: OP(q, k, v, attn_mask=mask), backend=backend, fullgraph=True)
        compiled(q, k, v)
        saved = _saved(lambda: compiled(q, k, v))
    finally:
        torch._dynamo.reset()
    large = [tuple(t.shape) for t in saved if t.numel() >= L * S and t.untyped_storage().data_ptr() != mask.data_ptr()]
    assert saved and large == [], large
