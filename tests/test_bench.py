"""The benchmark's machinery on tiny models: the saved-tensor count, the autocast stand-in, the report."""

import json

import torch
import torch.nn.functional as F

from t2v_unlearn.backends.tiny import tiny_text_encoder
from t2v_unlearn.bench import (
    CudaAutocastOnMeta,
    SavedTensorCounter,
    count_unlearning_gpu_memory,
    format_report,
    main,
    run_bench,
)


def test_counter_linear_saved_input():
    linear = torch.nn.Linear(8, 3)
    x = torch.randn(5, 8)
    with SavedTensorCounter(exclude=list(linear.parameters())) as counter:
        linear(x).sum()
    # The weight gradient needs the input (5 x 8 float32); the input has no gradient, so the weight
    # itself is not saved.
    assert counter.saved_bytes == 5 * 8 * 4


def test_counter_counts_shared_storage_once():
    first, second = torch.nn.Linear(8, 3), torch.nn.Linear(8, 3)
    x = torch.randn(5, 8)
    with SavedTensorCounter(exclude=[*first.parameters(), *second.parameters()]) as counter:
        first(x).sum()
        second(x[:2]).sum()
    assert counter.saved_bytes == 5 * 8 * 4


def test_counter_excludes_weights():
    linear = torch.nn.Linear(8, 3).requires_grad_(False)
    x = torch.randn(5, 8, requires_grad=True)
    with SavedTensorCounter() as everything:
        linear(x).sum()
    with SavedTensorCounter(exclude=[linear.weight]) as activations:
        linear(x).sum()
    # The input gradient needs only the weight (3 x 8 float32), which is a weight, not an activation.
    assert everything.saved_bytes == 3 * 8 * 4
    assert activations.saved_bytes == 0


def test_autocast_stand_in_casts_and_saves_copies():
    with torch.device("meta"):
        linear = torch.nn.Linear(8, 3)
    x = torch.empty(5, 8, device="meta")
    with CudaAutocastOnMeta(autocast=True), SavedTensorCounter(exclude=list(linear.parameters())) as counter:
        y = linear(x)
        normed = F.layer_norm(y, (3,))
    assert y.dtype == torch.float16
    assert normed.dtype == torch.float32
    # Saved: the float16 copy of x (weight gradient) and layer_norm's float32 copy of y with its
    # mean and reciprocal standard deviation (5 x 1 each).
    assert counter.saved_bytes == 5 * 8 * 2 + 5 * 3 * 4 + 2 * 5 * 4


def test_meta_attention_saves_no_probabilities():
    tokens, width = 64, 8
    query = torch.empty(1, 2, tokens, width, device="meta", dtype=torch.float16, requires_grad=True)
    key = torch.empty_like(query, requires_grad=True)
    value = torch.empty_like(query, requires_grad=True)
    with CudaAutocastOnMeta(autocast=False), SavedTensorCounter() as counter:
        out = F.scaled_dot_product_attention(query, key, value)
    assert out.shape == query.shape
    # Flash attention saves q, k, v, the output, the float32 log-sum-exp (1, 2, tokens) and its RNG
    # seed and offset (a few bytes), not the (1, 2, tokens, tokens) probabilities.
    expected = 4 * query.numel() * 2 + 2 * tokens * 4
    assert expected <= counter.saved_bytes <= expected + 64
    assert counter.saved_bytes < 2 * tokens * tokens * 2


def test_checkpoint_counts_inputs_and_recompute():
    block = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    x = torch.randn(5, 8, requires_grad=True)
    weights = list(block.parameters())
    with SavedTensorCounter(exclude=weights) as plain:
        block(x)
    with SavedTensorCounter(exclude=weights) as counter:
        out = counter.checkpoint(block, x)
    out.sum().backward()
    assert counter.saved_bytes == 5 * 8 * 4
    assert counter.max_block_bytes == plain.saved_bytes
    assert x.grad is not None


def test_gpu_memory_count_tiny():
    plain = count_unlearning_gpu_memory("tiny", batch_size=2, gradient_checkpointing=False)
    checkpointed = count_unlearning_gpu_memory("tiny", batch_size=2, gradient_checkpointing=True)
    parameter_bytes = sum(p.numel() * 4 for p in tiny_text_encoder().parameters())
    # Every encoder weight is trainable and float32: one gradient and two Adam moments each.
    assert plain.gradients == parameter_bytes
    assert plain.adam_state == 2 * parameter_bytes
    assert plain.recompute == 0
    assert checkpointed.recompute > 0
    assert checkpointed.saved < plain.saved
    assert checkpointed.weights == plain.weights


def test_run_bench_tiny_structure():
    result = run_bench(model="tiny", steps=2, device="cpu", batch_size=2)

    defaults, reference = result.generation
    assert (defaults.sampler, reference.sampler) == ("DPMSolverMultistepScheduler", "PNDMScheduler")
    assert (defaults.images_per_call, reference.images_per_call) == (4, 1)
    assert (defaults.full_steps, reference.full_steps) == (25, 50)
    # PNDM without Runge-Kutta steps evaluates the UNet once more than its step count.
    assert (defaults.full_unet_calls, reference.full_unet_calls) == (25, 51)
    assert (defaults.measured_unet_calls, reference.measured_unet_calls) == (2, 3)
    assert defaults.step_s > 0
    assert reference.step_s > 0
    assert defaults.per_image_s == defaults.call_s / 4

    assert [t.label for t in result.unlearning] == ["defaults", "reference"]
    assert all(len(t.step_s) == 2 for t in result.unlearning)
    settings = [(c.autocast, c.gradient_checkpointing) for c in result.gpu_memory]
    assert settings == [(True, False), (True, True), (False, False)]
    assert set(result.peak_host_bytes) == {"gpu_memory", "generation", "unlearning"}
    assert len(result.checks) == 3

    report = format_report(result)
    assert sum(line.startswith(("PASS", "FAIL")) for line in report.splitlines()) == 3
    assert "extrap." in report
    json.dumps(result.to_dict())


def test_cli_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    status = main(["--model", "tiny", "--skip-generation", "--skip-unlearning", "--json", str(path)])
    data = json.loads(path.read_text())
    assert status == 0
    assert data["model"] == "tiny"
    assert [row["gradient_checkpointing"] for row in data["gpu_memory"]] == [False, True, False]
    assert data["checks"][0]["passed"] is True
