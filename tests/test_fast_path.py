"""The trainers' fast path (padding-free micro-batches, LM head on labelled positions only) trains
exactly what padded batching trains, and the training benchmark counts tokens right.

    python -m pytest tests/test_fast_path.py -q
"""

import pytest
import torch

from script.bench import bench_train
from script.training_data import to_sft_dataset
from script.training_utils import (
    add_compact_lm_head,
    attach_lora,
    batch_token_counts,
    build_trainer,
    load_model_and_tokenizer,
)
from tests.sample_records import asan_type1_records, tiny_run


def first_batch_loss(run, records):
    """Loss and gradient norm of the first micro-batch as the trainer computes them."""
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(run)
    trainer = build_trainer(run, attach_lora(model, run), tokenizer, to_sft_dataset(records), save_strategy="no")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    grad = torch.sqrt(sum((p.grad ** 2).sum() for p in trainer.model.parameters() if p.grad is not None))
    return batch, loss.item(), grad.item(), trainer


def test_padding_free_and_compact_head_give_the_padded_loss_and_gradients(tiny_models, tmp_path):
    records = asan_type1_records()[:8]
    padded_batch, padded_loss, padded_grad, _ = first_batch_loss(
        tiny_run(tmp_path / "a", "--batching", "padded", "--batch-size", "4"), records)
    free_batch, free_loss, free_grad, trainer = first_batch_loss(
        tiny_run(tmp_path / "b", "--batch-size", "4"), records)

    assert "attention_mask" in padded_batch and padded_batch["input_ids"].shape[0] == 4
    assert "attention_mask" not in free_batch and free_batch["input_ids"].shape[0] == 1  # one row, no padding
    # The same real tokens: the padded batch's mask counts exactly the padding-free row's positions.
    assert batch_token_counts(padded_batch)[0] == batch_token_counts(free_batch)[0] == free_batch["input_ids"].numel()
    assert batch_token_counts(padded_batch)[1] > batch_token_counts(padded_batch)[0]  # rows of unequal length
    assert free_loss == pytest.approx(padded_loss, abs=1e-5)
    assert free_grad == pytest.approx(padded_grad, rel=1e-4)
    options = trainer.model.get_base_model()
    assert getattr(options, "_compact_lm_head", False)


def test_compact_head_matches_the_full_head_position_by_position(tiny_models, tmp_path):
    run = tiny_run(tmp_path, "--batching", "padded", "--batch-size", "2")
    model, tokenizer = load_model_and_tokenizer(run)
    trainer = build_trainer(run, attach_lora(model, run), tokenizer, to_sft_dataset(asan_type1_records()[:2]),
                            save_strategy="no")
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    base = trainer.model.get_base_model()
    assert add_compact_lm_head(trainer.model) is False  # already installed by build_trainer: not twice
    trainer.model.eval()
    with torch.no_grad():
        compact = trainer.model(**batch, fused_lm_head=True)
        full = base(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    expected = torch.log_softmax(full.float(), -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    assert torch.equal(compact.label_mask, mask)
    assert torch.allclose(compact.log_probs[mask], expected[mask], atol=1e-5)
    assert torch.all(compact.log_probs[~mask] == 0)
    assert torch.equal(compact.is_top1[mask].bool(), (full.argmax(-1) == targets)[mask])


def test_batch_token_counts_on_known_batches():
    padded = {"input_ids": torch.zeros(3, 5, dtype=torch.long),
              "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])}
    assert batch_token_counts(padded) == (10, 15)
    free = {"input_ids": torch.zeros(1, 10, dtype=torch.long), "position_ids": torch.tensor([[0, 1, 2, 3, 4, 0, 1, 0, 1, 2]])}
    assert batch_token_counts(free) == (10, 10)


def test_bench_throughput_skips_the_first_step_and_counts_padding():
    # 3 steps x 2 micro-batches; one extra micro-batch fetched ahead by the loader is ignored.
    counts = [(10, 20), (10, 20), (30, 40), (30, 40), (50, 50), (50, 50), (99, 99)]
    figures = bench_train.throughput(counts, step_ends=[1.0, 2.0, 4.0], grad_accum=2)
    assert figures["timed_real_tokens"] == 160 and figures["timed_seconds"] == 3.0
    assert figures["real_tokens_per_s"] == pytest.approx(160 / 3)
    assert figures["real_tokens"] == 180 and figures["positions"] == 220
    assert figures["padding_share"] == pytest.approx(40 / 220)
    with pytest.raises(ValueError):
        bench_train.throughput(counts, step_ends=[1.0], grad_accum=2)


def test_bench_compare_and_table():
    def result(tps, losses, mem):
        return {"real_tokens_per_s": tps, "losses": losses, "final_loss": losses[-1], "padding_share": 0.25,
                "peak_memory_bytes": mem}

    results = {"a1_guide": result(100.0, [3.0, 2.0], 4 << 20), "a2_trl_default": result(400.0, [3.0, 2.0], 2 << 20),
               "b_toolkit": result(1000.0, [3.0, 2.001], 1 << 20)}
    out = bench_train.compare(results)
    assert out["b_over_a1"] == pytest.approx(10.0) and out["b_over_a2"] == pytest.approx(2.5)
    assert out["max_loss_diff_b_vs_a2"] == pytest.approx(0.001)
    assert out["peak_memory_b_over_a2"] == pytest.approx(0.5)
    text = bench_train.table(results)
    assert "| b_toolkit | 1000 | 2.50x | 25.0% | 1 | 2.0010 |" in text


def test_bench_rejects_unknown_configurations():
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--configs", "a2_trl_default,nonsense"])
    with pytest.raises(SystemExit):
        bench_train.parse_args(["--steps", "1"])


def test_random_shape_model_has_the_published_layout_scaled_down():
    from script.check_gpu_memory import Architecture

    arch = Architecture(hidden_size=64, intermediate_size=128, num_hidden_layers=6, num_attention_heads=2,
                        num_key_value_heads=1, head_dim=32, vocab_size=512)
    model = bench_train.random_text_model(arch, "cpu", torch.float32)
    assert model.config.num_hidden_layers == 6 and model.config.vocab_size == 512
    assert model.config.layer_types.count("full_attention") == 1  # Gemma 3: five sliding layers per full one
    expected = (arch.vocab_size * arch.hidden_size
                + arch.num_hidden_layers * sum(a * b for a, b in arch.projection_shapes().values()))
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert sum(p.numel() for p in model.parameters()) - norms == expected
