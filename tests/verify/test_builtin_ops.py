"""Every built-in op case through the public battery: each (case, check) cell of the matrix must pass."""

from __future__ import annotations

import pytest

from manualbp.verify import CUDA_CHECKS, GRAPH_CAPTURE_CHECKS, available_checks, verify_cases
from manualbp.verify.builtin_cases import BUILTIN_CASES
from manualbp.verify.cases import FAMILY_CASES
from tests.conftest import DEVICES

#: Cases whose ``compile_dynamic`` cell the suite leaves to another case of the same ops, named beside it: compiling
#: a layer made of layers with dynamic shapes takes 10 to 50 s a case, and the suite must stay within its time.
#: ``manualbp verify`` runs every cell.
DYNAMIC_SHAPES_ELSEWHERE = {
    "multihead_attention-cross": "multihead_attention-kdim-vdim-add_bias_kv-add_zero_attn",
    "multihead_attention-causal-key_padding_mask-per_head_weights": "attention-causal-L3-S4",
    "multihead_attention-causal-no_weights": "attention-causal-L3-S4",
    "multihead_attention-unbatched-nobias": "multihead_attention-self-batch_first",
    "transformer_encoder_layer-relu": "transformer_encoder_layer-gelu-norm_first-batch_first",
    "vision_transformer-tiny": "transformer_encoder_layer-gelu-norm_first-batch_first",
    "transformer_encoder-2layers": "transformer_encoder_layer-gelu-norm_first-batch_first",
    # the decoder layer is the encoder layer's parts plus cross-attention (multihead_attention-kdim-vdim-...)
    "transformer_decoder_layer-gelu-norm_first-batch_first": "transformer_encoder_layer-gelu-norm_first-batch_first",
    "transformer_decoder_layer-relu": "transformer_encoder_layer-gelu-norm_first-batch_first",
    "transformer_decoder-2layers": "transformer_encoder_layer-gelu-norm_first-batch_first",
    # a convolution's geometry is constants of the graph: four cases carry the dynamic batch size for all
    "conv2d-batch1-one_channel": "conv2d-k3",
    "conv2d-dilation2-pad1": "conv2d-k3",
    "conv2d-kernel_equals_input": "conv2d-k3",
    "conv2d-nobias": "conv2d-k3",
    "conv2d-rect_dilation-stride2": "conv2d-k3",
    "conv2d-rect_kernel-rect_stride": "conv2d-k3",
    "conv2d-stride2-pad1": "conv2d-k3",
    "conv2d-stride3-kernel2": "conv2d-k3",
    "conv2d-valid": "conv2d-k3",
    "conv2d-same-dilated": "conv2d-same-even_kernel",
    "conv2d-depthwise": "conv2d-depthwise-multiplier2-stride2",
    "conv2d-groups2": "conv2d-depthwise-multiplier2-stride2",
    "conv2d-unbatched-same-groups2": "conv2d-unbatched",
    "attention-float_mask": "attention-bool_mask-broadcast-masked_row",
    "attention-scores-spread": "attention",
    "attention-Ev5": "attention",
    "attention-scale0.7": "attention",
    "attention-causal-L4-S2": "attention-causal-L3-S4",
    "lstm-packed-bidirectional": "lstm-2layers-bidirectional-batch_first-dropout0.5-h0-c0",
    "lstm": "lstm-2layers-bidirectional-batch_first-dropout0.5-h0-c0",
    "lstm-proj-unbatched-nobias": "lstm-2layers-bidirectional-batch_first-dropout0.5-h0-c0",
    "gru-2layers-bidirectional-nobias-batch_first-dropout0.5": "gru-packed-2layers",
    "gru": "gru-packed-2layers",
    "gru-unbatched-h0": "gru-packed-2layers",
    "rnn-unbatched-bidirectional-2layers-dropout0.5": "rnn-relu-2layers-nobias-batch_first-h0",
}


def _first_of_each_op(cases: list) -> dict[str, str]:
    """Each case of ``cases`` but the first of its op (the id up to its first "-"), mapped to that first one: the
    later families' geometry and options are constants of the graph, so one case per op carries the dynamic batch."""
    first: dict[str, str] = {}
    for case in cases:
        first.setdefault(case.id.split("-")[0], case.id)
    return {case.id: first[case.id.split("-")[0]] for case in cases if case.id != first[case.id.split("-")[0]]}


DYNAMIC_SHAPES_ELSEWHERE.update(_first_of_each_op(FAMILY_CASES))
# Swin V2's window attention is V1's with cosine logits and a table from an MLP: its dynamic batch (140 s of compiling
# on two cores) is left to V1's; V2's normalisation has its own case
for _case in FAMILY_CASES:
    if _case.id.startswith("shifted_window_attention_v2-"):
        DYNAMIC_SHAPES_ELSEWHERE[_case.id] = "shifted_window_attention-dim8-heads2"

# the graph-capture cells compile or export (seconds each): the slow tier (pytest -m slow), which CI runs too. Each
# device's cells are its default checks (``available_checks``: on cuda, the sample there, plus the CUDA checks); the
# CPU's leave out the CUDA checks, which are cuda's cells
CELLS = [
    pytest.param(
        case,
        check,
        device,
        id=f"{case.id}-{check}-{device}",
        marks=[pytest.mark.slow] if check in GRAPH_CAPTURE_CHECKS else [],
    )
    for device in DEVICES
    for case in BUILTIN_CASES
    for check in available_checks(device)
    if not (device == "cpu" and check in CUDA_CHECKS)
    and not (check == "compile_dynamic" and case.id in DYNAMIC_SHAPES_ELSEWHERE)
]


def test_each_case_leaving_its_dynamic_shapes_to_another_names_one_that_runs_it():
    ids = {case.id for case in BUILTIN_CASES}
    for case_id, representative in DYNAMIC_SHAPES_ELSEWHERE.items():
        assert case_id in ids and representative in ids and representative not in DYNAMIC_SHAPES_ELSEWHERE


@pytest.mark.parametrize("case, check, device", CELLS)
def test_builtin_op_passes_check(case, check, device):
    (row,) = verify_cases([case], checks=[check], device=device).rows
    if row.status == "unsupported" and row.detail.startswith("the reference raises on this machine"):
        pytest.skip(row.detail)  # torch's own layer cannot run this check on this CPU: nothing to compare with
    if row.status == "unsupported" and check in dict(case.unsupported):
        pytest.skip(row.detail)  # the check cannot apply to this configuration, as the case declares
    assert row.status == "pass", f"{row.case} / {row.check}: {row.status}: {row.detail}"
