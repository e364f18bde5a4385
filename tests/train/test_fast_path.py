"""The GPU fast path of SFT (train/speed.py, train/preflight.py, infer/attention.py, plan/speed.py) is numerically the plain path.

On CPU the varlen kernel is absent, so the packed training branch runs its reference (per-sample SDPA): a batch packed
by TRL's padding-free collator, through our attention, gives each sample the logits, per-token loss and gradients it
gets alone through SDPA, and packed samples do not see each other. The gpu-marked tests repeat this with PyTorch's
varlen flash kernel in bf16 (run them on the GPU machine: pytest -m gpu tests/train/test_fast_path.py)."""

import subprocess
import sys
import textwrap

import pytest
import torch
import yaml

from tunesmith.config import SFTConfig
from tunesmith.infer import attention
from tunesmith.plan.estimate import Setup
from tunesmith.plan.hardware import GPU, Hardware
from tunesmith.plan.model_shape import load_shape
from tunesmith.plan import speed as plan_speed
from tunesmith.train import preflight, speed

LENGTHS = (17, 5, 11)  # three samples of different lengths, packed into one row


def tiny_qwen(device="cpu", dtype=torch.float32, hidden=64, heads=2, kv_heads=1, head_dim=32, seed=0):
    """A random 2-layer Qwen2 (grouped key/value heads, q/k/v biases), weights wide enough that attention matters."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                         max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.2)
    return model.to(device=device, dtype=dtype)


def samples(lengths=LENGTHS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(1, 128, (n,), generator=gen).tolist()
        labels = [-100] * 2 + ids[2:]  # a short "prompt" without loss, as our renderer writes
        out.append({"input_ids": ids, "labels": labels})
    return out


def packed_batch(rows, device="cpu", boundaries=True):
    """Exactly what SFTTrainer feeds the model with packing: one flattened row, position ids restarting per sample,
    and (unless `boundaries` is off) cu_seq_lens_q/k + max_length_q/k."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(rows)
    if not boundaries:
        batch = {k: v for k, v in batch.items() if k in ("input_ids", "labels", "position_ids")}
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def token_losses(logits, labels):
    """Per-token next-token cross-entropy, 0 where the label is -100 (shape: tokens - 1)."""
    return torch.nn.functional.cross_entropy(logits[:-1].float(), labels[1:], ignore_index=-100, reduction="none")


def packed_vs_alone(model, rows, boundaries=True):
    """(logits and per-token losses of the packed row, split per sample; the same for each sample alone; the summed
    losses, for gradients). The packed row runs our attention, the samples alone run SDPA."""
    device = next(model.parameters()).device
    model.config._attn_implementation = "sdpa"
    alone = [model(input_ids=torch.tensor([r["input_ids"]], device=device)).logits[0] for r in rows]
    alone_losses = [token_losses(lg, torch.tensor(r["labels"], device=device)) for lg, r in zip(alone, rows)]
    attention.use_varlen(model)
    batch = packed_batch(rows, device, boundaries)
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits[0]
    model.config._attn_implementation = "sdpa"
    losses = token_losses(logits, labels[0])
    split_logits, split_losses, start = [], [], 0
    for r in rows:
        n = len(r["input_ids"])
        split_logits.append(logits[start:start + n])
        split_losses.append(losses[start:start + n - 1])  # the target after a sample's last token is the next one's
        start += n
    return split_logits, split_losses, alone, alone_losses, losses.sum(), sum(x.sum() for x in alone_losses)


def gradients_of(model, **losses):
    """name -> the model's parameter gradients of that loss (the graphs are kept for the next)."""
    grads = {}
    for name, total in losses.items():
        model.zero_grad()
        total.backward(retain_graph=True)
        grads[name] = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads


# -----------------------------------------------------------------------------
# CPU: the reference of the packed branch


@pytest.mark.parametrize("boundaries", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_packed_batch_gives_each_sample_its_own_loss_and_gradients(boundaries, monkeypatch):
    calls = []
    real = attention.reference_varlen
    monkeypatch.setattr(attention, "reference_varlen", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = tiny_qwen()
    rows = samples()
    packed_logits, packed_losses, alone, alone_losses, packed_sum, alone_sum = packed_vs_alone(model, rows, boundaries)
    assert calls, "the packed branch did not run"
    for p, a in zip(packed_logits, alone):
        assert torch.allclose(p, a, atol=1e-4), (p - a).abs().max()
    for p, a in zip(packed_losses, alone_losses):
        assert torch.allclose(p, a, atol=1e-4)
    assert packed_losses[0].abs().sum() > 0 and torch.isclose(packed_sum, alone_sum, atol=1e-4)

    grads = gradients_of(model, packed=packed_sum, alone=alone_sum)
    for n, g in grads["alone"].items():
        assert torch.allclose(grads["packed"][n], g, atol=1e-4, rtol=1e-4), n


def test_packed_samples_do_not_attend_to_each_other():
    model = tiny_qwen().eval()
    rows = samples()
    changed = [dict(r) for r in rows]
    changed[0] = {"input_ids": [(t * 7 + 3) % 127 + 1 for t in rows[0]["input_ids"]], "labels": rows[0]["labels"]}
    attention.use_varlen(model)
    with torch.no_grad():
        before = model(**{k: v for k, v in packed_batch(rows).items() if k != "labels"}, use_cache=False).logits[0]
        after = model(**{k: v for k, v in packed_batch(changed).items() if k != "labels"}, use_cache=False).logits[0]
    first = len(rows[0]["input_ids"])
    assert not torch.allclose(before[:first], after[:first], atol=1e-3)  # the first sample did change
    assert torch.allclose(before[first:], after[first:], atol=1e-6)  # and the others did not notice


def test_plain_batches_keep_the_sdpa_path(monkeypatch):
    """generate() on a served model passes no boundaries: no packed branch (the engine's path stays SDPA)."""
    monkeypatch.setattr(attention, "reference_varlen", lambda *a, **k: pytest.fail("packed branch on a plain batch"))
    model = tiny_qwen().eval()
    ids = torch.tensor([samples()[0]["input_ids"]] * 2)
    with torch.no_grad():
        want = model(input_ids=ids).logits
        attention.use_varlen(model)
        got = model(input_ids=ids, position_ids=torch.arange(ids.shape[1]).expand(2, -1)).logits
    assert torch.allclose(got, want, atol=1e-5)


def stub_tokenizer():
    """TRL needs a tokenizer only for its pad token; the data are token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                   pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def test_sft_trainer_trains_packed_rows_with_our_attention_as_with_a_block_mask(monkeypatch, tmp_path):
    """The whole TRL path through run_trainer (bfd packing, padding-free collator, fused LM head, partial
    checkpointing): the losses with our attention (CPU reference) equal those of sdpa with transformers' block mask."""
    import datasets

    from tunesmith.train.setup import run_trainer

    rows = samples((40, 13, 27, 60, 9, 33, 21, 50, 70, 12))
    losses = {}
    for varlen in (False, True):
        monkeypatch.setattr(speed, "varlen_runs", lambda device, dtype: varlen)
        cfg = SFTConfig(dataset=["x"], method="full", packing=True, gradient_checkpointing=varlen, checkpoint_every=2,
                        max_length=128, batch_size=2, max_steps=3, logging_steps=1, learning_rate=1e-3,
                        report_to=["none"], output_dir=str(tmp_path / f"varlen-{varlen}"))
        model = tiny_qwen()
        assert speed.prepare_model(cfg, model, "cpu", torch.float32)["attention"] == (
            attention.NAME if varlen else "sdpa")
        trainer = run_trainer(cfg, tmp_path / f"varlen-{varlen}", model, stub_tokenizer(),
                              datasets.Dataset.from_list(rows), None, "cpu", torch.float32, None, None)
        losses[varlen] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if varlen:  # checkpoint_every 2: layer 0 recomputes, layer 1 keeps its activations
            assert [layer.gradient_checkpointing for layer in model.model.layers] == [True, False]
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_unpacked_batches_train_padding_free_as_padded(monkeypatch, tmp_path):
    """packing off, batch 4, where the varlen kernel runs: TRL flattens each batch's rows into one (no pad tokens
    computed) and the losses are those of the same rows padded through sdpa, step for step."""
    import datasets

    from tunesmith.train.setup import run_trainer

    rows = samples((40, 13, 27, 60, 9, 33, 21, 50, 70, 12, 18, 44))
    losses, shapes = {}, {}
    for varlen in (False, True):
        monkeypatch.setattr(speed, "varlen_runs", lambda device, dtype: varlen)
        cfg = SFTConfig(dataset=["x"], method="full", packing=False, max_length=128, batch_size=4, max_steps=3,
                        logging_steps=1, learning_rate=1e-3, report_to=["none"], output_dir=str(tmp_path / f"{varlen}"))
        model = tiny_qwen()
        chosen = speed.prepare_model(cfg, model, "cpu", torch.float32)
        assert chosen["attention"] == (attention.NAME if varlen else "sdpa")
        assert chosen.get("batches") == ("padding-free" if varlen else None)
        seen = shapes[varlen] = []
        model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
        trainer = run_trainer(cfg, tmp_path / f"{varlen}", model, stub_tokenizer(),
                              datasets.Dataset.from_list(rows), None, "cpu", torch.float32, None, None)
        losses[varlen] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert all(rows_ == 4 for rows_, _ in shapes[False])  # padded: 4 rows per step
    assert all(rows_ == 1 for rows_, _ in shapes[True])  # flattened: one row of the 4 samples' tokens, no padding
    assert sum(n for _, n in shapes[True]) < sum(n * 4 for _, n in shapes[False])
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], abs=1e-4)


def test_one_pass_of_8_rows_trains_as_4_accumulated_passes_of_2(monkeypatch, tmp_path):
    """What folding gradient accumulation (train/preflight.py) relies on: padding-free batches of 8 rows in one pass
    give the losses and weights of 2 rows x grad_accum 4, step for step (TRL divides by the step's label count)."""
    import datasets

    from tunesmith.train.setup import run_trainer

    monkeypatch.setattr(speed, "varlen_runs", lambda device, dtype: True)
    rows = samples((40, 13, 27, 60, 9, 33, 21, 50, 70, 12, 18, 44, 8, 31, 25, 16))
    losses, weights = {}, {}
    for batch, accumulation in ((2, 4), (8, 1)):
        run = tmp_path / f"{batch}x{accumulation}"
        cfg = SFTConfig(dataset=["x"], method="full", packing=False, max_length=128, batch_size=batch,
                        grad_accum=accumulation, max_steps=2, logging_steps=1, learning_rate=1e-3,
                        report_to=["none"], output_dir=str(run))
        model = tiny_qwen()
        speed.prepare_model(cfg, model, "cpu", torch.float32)
        trainer = run_trainer(cfg, run, model, stub_tokenizer(), datasets.Dataset.from_list(rows), None, "cpu",
                              torch.float32, None, None)
        losses[batch] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        weights[batch] = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert len(losses[8]) == 2 and losses[8] == pytest.approx(losses[2], abs=1e-5)
    assert torch.allclose(weights[8], weights[2], atol=1e-5)


# -----------------------------------------------------------------------------
# Choices: packing, checkpointing, kernels, TRL arguments


def test_unset_packing_and_checkpointing_resolve_to_todays_defaults_on_cpu(tmp_path):
    from tunesmith.train import run as runs

    cfg = SFTConfig(dataset=["x"], device="cpu")
    assert cfg.packing is None and cfg.gradient_checkpointing is None
    preflight.resolve_speed(cfg)
    model = tiny_qwen()
    chosen = speed.prepare_model(cfg, model, "cpu", torch.float32)
    assert (cfg.packing, cfg.gradient_checkpointing) == (False, False)
    assert chosen == {"attention": "sdpa", "kernels": "none", "optim": "transformers default"}
    runs.save_config(cfg, tmp_path, speed=chosen)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (saved["packing"], saved["gradient_checkpointing"]) == (False, False)


def test_gpu_choices_land_in_the_config(monkeypatch, tmp_path):
    """On an H100 (79 GiB free, mocked): W1 and W2 pack and need no checkpointing; W2 with batch 3 recomputes only
    some layers. Explicit settings always win."""
    import tunesmith.models.load as models
    import tunesmith.plan.hardware as hardware
    from tunesmith.train import run as runs

    monkeypatch.setattr(models, "pick_device", lambda preference="auto": "cuda")
    monkeypatch.setattr(models, "pick_dtype", lambda preference, device: torch.bfloat16)
    monkeypatch.setattr(speed, "varlen_runs", lambda device, dtype: True)
    monkeypatch.setattr(hardware, "probe", lambda *a: Hardware(gpus=[GPU(0, "H100", 79.1, 79.1, True)]))

    w1 = SFTConfig(dataset=["x"], model="qwen2.5-0.5b-instruct", method="full", max_length=4096, batch_size=8)
    preflight.resolve_speed(w1)
    assert (w1.packing, w1.gradient_checkpointing, w1.checkpoint_every) == (True, False, None)

    w2 = SFTConfig(dataset=["x"], model="qwen2.5-7b-instruct", method="lora", max_length=4096, batch_size=2)
    preflight.resolve_speed(w2)
    assert (w2.packing, w2.gradient_checkpointing, w2.checkpoint_every) == (True, False, None)

    bigger = SFTConfig(dataset=["x"], model="qwen2.5-7b-instruct", method="lora", max_length=4096, batch_size=3)
    preflight.resolve_speed(bigger)
    assert bigger.packing is True and bigger.gradient_checkpointing is True and 1 < bigger.checkpoint_every < 28
    runs.save_config(bigger, tmp_path)
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert (saved["packing"], saved["gradient_checkpointing"], saved["checkpoint_every"]) == (
        True, True, bigger.checkpoint_every)

    mine = SFTConfig(dataset=["x"], model="qwen2.5-7b-instruct", packing=False, gradient_checkpointing="auto")
    mine.gradient_checkpointing = True
    preflight.resolve_speed(mine)
    assert (mine.packing, mine.gradient_checkpointing, mine.checkpoint_every) == (False, True, None)


def test_gradient_accumulation_is_folded_where_the_memory_plan_fits_it_with_the_same_checkpointing(monkeypatch):
    """Unsloth's L8 setting (QLoRA 8B, 2 rows x GA 4) at its memory (offloaded checkpointing) on an H100: one pass of
    8 rows per step, the product that --resume compares kept, recorded for config.yaml. Not where 8 rows would need
    more recompute or memory than there is, nor on CPU, nor for preference methods."""
    import tunesmith.models.load as models
    import tunesmith.plan.hardware as hardware
    from tunesmith.config.rlhf import RLHFConfig

    device = {"name": "cuda", "free": 79.1}
    monkeypatch.setattr(models, "pick_device", lambda preference="auto": device["name"])
    monkeypatch.setattr(models, "pick_dtype", lambda preference, d: torch.bfloat16 if d == "cuda" else torch.float32)
    monkeypatch.setattr(speed, "varlen_runs", lambda d, dtype: d == "cuda")
    monkeypatch.setattr(hardware, "probe", lambda *a: Hardware(gpus=[GPU(0, "H100", 79.1, device["free"], True)]))

    def l8(config=SFTConfig, **kw):
        cfg = config(**{"dataset": ["x"], "model": "llama-3.1-8b-instruct", "tuner": "qlora", "packing": False,
                        "max_length": 2048, "batch_size": 2, "grad_accum": 4, **kw})
        return cfg, preflight.resolve_speed(cfg)

    cfg, choices = l8(gradient_checkpointing="offload")
    assert (cfg.batch_size, cfg.grad_accum, cfg.gradient_checkpointing) == (8, 1, "offload")
    assert choices["accumulation"] == "batch_size 2 x grad_accum 4 -> 8 x 1"
    cfg, choices = l8()  # no checkpointing needed for 2 rows; 8 rows of 2048 tokens would need it: kept
    assert (cfg.batch_size, cfg.grad_accum, cfg.gradient_checkpointing) == (2, 4, False)
    assert "accumulation" not in choices
    device["free"] = 12
    assert l8(gradient_checkpointing="offload")[0].grad_accum == 4  # 8 rows do not fit in 12 GiB
    assert l8(config=RLHFConfig, method="dpo", gradient_checkpointing="offload")[0].grad_accum == 4
    device["name"] = "cpu"
    assert l8(tuner="lora", gradient_checkpointing=True)[0].grad_accum == 4


def test_partial_checkpointing_recomputes_as_few_layers_as_fit():
    gib = 1024**3
    shape = load_shape("qwen2.5-7b-instruct")
    s = Setup(method="lora", seq=4096, micro_batch=3, packing=True, attn="flash")
    every = plan_speed.checkpoint_every_that_fits(shape, s, 71 * gib)
    assert plan_speed.partial_checkpointing_bytes(shape, s, every) <= 71 * gib
    assert every == shape.layers or plan_speed.partial_checkpointing_bytes(shape, s, every + 1) > 71 * gib
    assert plan_speed.checkpoint_every_that_fits(shape, s, 500 * gib) is None  # fits without
    assert plan_speed.checkpoint_every_that_fits(shape, s, 10 * gib) == 1  # nothing fits: all layers
    assert plan_speed.checkpointed_layers(28, 5) == 6  # transformers checkpoints layers 0, 5, ..., 25


def test_trl_arguments_of_the_fast_path(tmp_path):
    from tunesmith.train.setup import trl_args

    cfg = SFTConfig(dataset=["x"], packing=True, gradient_checkpointing=True, checkpoint_every=3, report_to=["none"])
    args = trl_args(cfg, tmp_path, "cpu", torch.float32, has_eval=False)
    assert args.packing and args.activation_checkpointing and args.gradient_checkpointing
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False, "every_n_layers": 3}
    assert speed.speed_args(cfg, "cuda")["optim"] == "adamw_torch_fused"
    off = trl_args(SFTConfig(dataset=["x"], report_to=["none"]), tmp_path, "cpu", torch.float32, has_eval=False)
    assert not off.packing and not off.activation_checkpointing  # unset: TRL's checkpointing default does not leak in
    assert not off.padding_free and off.max_length == 2048  # no varlen kernel on CPU: padded batches


def test_padding_free_is_chosen_for_unpacked_batches_where_the_varlen_kernel_runs(monkeypatch, tmp_path):
    from tunesmith.train.setup import trl_args

    monkeypatch.setattr(speed, "varlen_runs", lambda device, dtype: True)

    def args(own_collator=False, **kw):
        cfg = SFTConfig(dataset=["x"], report_to=["none"], **{"packing": False, "batch_size": 2, **kw})
        return trl_args(cfg, tmp_path, "cpu", torch.float32, has_eval=False,  # varlen_runs mocked: as on a GPU
                        own_collator=own_collator)

    unpacked = args()
    assert unpacked.padding_free and not unpacked.packing and unpacked.max_length is None  # rows are cut already
    assert args(packing=True).padding_free is False and args(packing=True).max_length == 2048  # packing flattens
    assert not args(batch_size=1).padding_free  # one row has no padding
    assert not args(dp={"epsilon": 8.0}).padding_free  # DP-SGD clips each sample's gradient: one per row
    assert not args(tuner="longlora").padding_free  # S2-Attn groups padded rows
    vlm = args(own_collator=True)  # a VLM's collator makes its batches (train/vision.py)
    assert not vlm.padding_free and vlm.max_length == 2048


def test_adapters_without_peft_input_casts_train_exactly_as_with_them():
    """Step 5 of train/speed.py: under bf16 autocast, LoRA inputs that skip peft's float32 cast give the same loss and
    the same adapter gradients, bit for bit (bf16 -> fp32 -> bf16 is exact), and a float32 run is left alone."""
    from peft import LoraConfig, get_peft_model

    ids = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))

    def loss_and_grads(skip_casts: bool):
        model = get_peft_model(tiny_qwen(dtype=torch.bfloat16), LoraConfig(r=8, target_modules="all-linear",
                                                                             init_lora_weights=False))
        if skip_casts:
            assert speed.keep_adapter_inputs_in_compute_dtype(model, torch.bfloat16) == 14  # 7 linears x 2 layers
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (loss_cast, grads_cast), (loss_kept, grads_kept) = loss_and_grads(False), loss_and_grads(True)
    assert torch.equal(loss_cast, loss_kept)
    assert grads_cast.keys() == grads_kept.keys() and all(torch.equal(grads_cast[n], grads_kept[n]) for n in grads_cast)
    plain = get_peft_model(tiny_qwen(), LoraConfig(r=8, target_modules="all-linear"))
    assert speed.keep_adapter_inputs_in_compute_dtype(plain, torch.float32) == 0


def lora_loss_and_grads(ids, dtype=torch.float32, autocast=False, fused=False, dropout=0.0):
    """A tiny Qwen with LoRA on every linear (B non-zero), one forward and backward: (loss, adapter gradients)."""
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.patches.peft_lora import use_fused_forward

    device = ids.device.type
    model = get_peft_model(tiny_qwen(device, dtype), LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout,
                                                                target_modules="all-linear", init_lora_weights=False))
    speed.keep_adapter_inputs_in_compute_dtype(model, dtype)
    if fused:
        assert use_fused_forward(model) == 14  # 7 linears x 2 layers
    torch.manual_seed(0)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_forward_trains_as_peft(dropout, device, monkeypatch):
    """Step 7: B's matmul adding the update into the base output gives peft's loss and adapter gradients: in float32
    to rounding; under bf16 autocast as close to the float32 result as peft's own bf16 run is. It never falls back."""
    from peft.tuners.lora.layer import Linear

    def fused(dtype, autocast):
        with monkeypatch.context() as patched:
            patched.setattr(Linear, "forward", lambda *a, **k: pytest.fail("fell back to peft's forward"))
            return lora_loss_and_grads(ids, dtype, autocast, fused=True, dropout=dropout)

    def worst(grads, reference):  # the largest gradient error, relative to each tensor's largest entry
        return max(float((grads[n].float() - g).abs().max() / g.abs().max()) for n, g in reference.items())

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    ids = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
    ref_loss, ref = lora_loss_and_grads(ids, dropout=dropout)
    loss, grads = fused(torch.float32, False)
    assert torch.allclose(loss, ref_loss, rtol=1e-6) and worst(grads, ref) < 1e-5
    peft_loss, peft_grads = lora_loss_and_grads(ids, torch.bfloat16, True, dropout=dropout)
    loss, grads = fused(torch.bfloat16, True)
    assert abs(loss - ref_loss) <= 1.5 * abs(peft_loss - ref_loss) + 1e-3
    assert worst(grads, ref) <= 1.5 * worst(peft_grads, ref) + 1e-3


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_lora_forward_trains_qlora_4bit_layers_as_peft(device, monkeypatch, tmp_path):
    """QLoRA: peft's bitsandbytes Linear4bit layers take the fused forward too (no defensive clone, no separate scale
    and add passes) and give peft's loss and adapter gradients (float32; bitsandbytes' CPU path, or CUDA's)."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora.bnb import Linear4bit

    from tunesmith.models.load import load_model
    from tunesmith.models.patches.peft_lora import use_fused_forward

    tiny_qwen().save_pretrained(tmp_path)
    ids = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)

    def loss_and_grads(fused):
        model = load_model(tmp_path, dtype=torch.float32, device=device, quantize_4bit=True)
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                 init_lora_weights=False))
        with monkeypatch.context() as patched:
            if fused:
                assert use_fused_forward(model) == 14  # 7 linears x 2 layers, all 4-bit
                patched.setattr(Linear4bit, "forward", lambda *a, **k: pytest.fail("fell back to peft's forward"))
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    (ref_loss, ref), (loss, grads) = loss_and_grads(False), loss_and_grads(True)
    assert torch.allclose(loss, ref_loss, rtol=1e-6) and grads.keys() == ref.keys()
    assert all(float((grads[n] - ref[n]).abs().max() / ref[n].abs().max()) < 1e-5 for n in ref)  # to rounding


def test_fused_lora_forward_leaves_other_cases_to_peft():
    from peft import LoraConfig, get_peft_model

    from tunesmith.models.patches.peft_lora import use_fused_forward

    ids = torch.randint(1, 128, (1, 9), generator=torch.Generator().manual_seed(1))
    base = tiny_qwen().eval()
    with torch.no_grad():
        plain = base(input_ids=ids).logits
    model = get_peft_model(tiny_qwen(), LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False)).eval()
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
    use_fused_forward(model)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, tuned, atol=1e-5)
        with model.disable_adapter():  # adapters off: peft's forward, the base answer
            assert torch.allclose(model(input_ids=ids).logits, plain, atol=1e-5)
        model.merge_adapter()  # merged: peft's forward over the merged weights
        assert torch.allclose(model(input_ids=ids).logits, tuned, atol=1e-4)


def test_liger_is_asked_for_only_where_it_runs():
    from tunesmith.errors import HardwareError

    cfg = SFTConfig(dataset=["x"], kernels="liger", packing=False, gradient_checkpointing=False)
    with pytest.raises(HardwareError, match="tunesmith\\[gpu\\]"):
        speed.prepare_model(cfg, tiny_qwen(), "cpu", torch.float32)


# -----------------------------------------------------------------------------
# GPU: PyTorch's varlen flash kernel, bf16


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("boundaries", [True, False], ids=["cu_seq_lens", "position_ids"])
def test_varlen_kernel_trains_packed_batches_as_samples_alone_on_gpu(boundaries):
    assert attention.torch_varlen_available(torch.bfloat16)
    model = tiny_qwen("cuda", torch.bfloat16, hidden=256, heads=8, kv_heads=2, head_dim=64)
    rows = samples((37, 120, 9, 300))
    packed_logits, _, alone, _, packed_sum, alone_sum = packed_vs_alone(model, rows, boundaries)
    for p, a in zip(packed_logits, alone):
        assert _relative(p, a) < 2e-2
    assert abs(packed_sum.item() - alone_sum.item()) / alone_sum.item() < 1e-2
    grads = gradients_of(model, packed=packed_sum, alone=alone_sum)
    # bf16 weight gradients sum thousands of products in a different order per kernel: measured up to 3.1e-2 apart
    # on an H100. Attention leaking across samples moves the logits above by far more than their 2e-2.
    for n, g in grads["alone"].items():
        assert _relative(grads["packed"][n], g) < 5e-2, n


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_varlen_kernel_gradients_with_grouped_heads_equal_the_reference_on_gpu():
    gen = torch.Generator().manual_seed(0)
    lengths = [7, 300, 33]
    cu = torch.tensor([0, 7, 307, 340], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(340, h, 64, generator=gen).cuda() for h in (14, 2, 2))
    grad_out = torch.randn(340, 14, 64, generator=gen).cuda()
    ours = [t.to(torch.bfloat16).requires_grad_() for t in (q, k, v)]
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    out = attention._kernel(*ours, cu, cu, max(lengths), max(lengths), None, None)
    want = attention.reference_varlen(*ref, cu, cu, scale=None)
    (out.float() * grad_out).sum().backward()
    (want * grad_out).sum().backward()
    assert _relative(out, want) < 2e-2
    for a, b in zip(ours, ref):
        assert _relative(a.grad, b.grad) < 3e-2


LIGER_SCRIPT = textwrap.dedent("""
    import torch
    from test_fast_path import packed_batch, samples, tiny_qwen
    from tunesmith.config import SFTConfig
    from tunesmith.train import speed

    rows = samples((37, 120, 9, 300))
    model = tiny_qwen("cuda", torch.bfloat16, hidden=256, heads=8, kv_heads=2, head_dim=64)
    batch = packed_batch(rows, "cuda")
    plain = model(**batch, use_cache=False).loss.item()  # sdpa: transformers builds the block mask from position_ids
    cfg = SFTConfig(dataset=["x"], packing=True, gradient_checkpointing=False, kernels="liger")
    chosen = speed.prepare_model(cfg, model, "cuda", torch.bfloat16)
    assert chosen["attention"] == "flash_tunesmith_varlen" and chosen["kernels"].startswith("liger"), chosen
    loss = model(**batch, use_cache=False).loss
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert abs(loss.item() - plain) / plain < 2e-2, (plain, loss.item())  # sdpa's block mask vs varlen + liger
    print("ok", plain, loss.item())
""")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_liger_kernels_train_with_the_varlen_attention_on_gpu(tmp_path):
    """In a child process: liger patches transformers' modules for the whole process."""
    pytest.importorskip("liger_kernel")
    import os
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", LIGER_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]
