"""Peak memory of the encoder tasks (embedding, reranker, classification), from config.json alone.

    est = estimate_encoder(config, task="embedding", setup=Setup(method="lora", micro_batch=32, seq=256), texts=3)
    result = plan_encoder(cfg, hardware)      # `tunesmith plan MODEL --task embedding`: the same dict as plan/run.py

An encoder step holds: the weights; gradients and AdamW's two fp32 states of what trains (every weight, or the LoRA
adapters plus a new head); and the activations of every text of the batch, each up to max_length tokens (batches pad
to their longest text, so real steps on short texts need less). Per layer and token a BERT-style layer keeps about
9 hidden-size vectors (the inputs of q/k/v, attention output and its projection, the residuals and layer norms, the
feed-forward input) plus 2 of the feed-forward width (before and after the activation; 3 for SwiGLU decoders),
attention through SDPA (no seq x seq scores). Texts per row: embedding 2 + hard negatives (query, positive,
negatives; the rows' count), reranker 1 pair (bce) or max_documents pairs (listwise), classification 1.
On CPU the plan is the process's peak RSS: the imports (CPU_RUNTIME) plus what the step allocates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunesmith.plan.estimate import CPU_RUNTIME, CUDA_CONTEXT, DTYPE_BYTES, FRAGMENTATION, GIB, Estimate, Setup

ADAM_STATE_BYTES = 8  # exp_avg + exp_avg_sq in fp32
# CPU: the heap keeps about this share of a step's activations past their use (glibc arenas), more with LoRA (whose
# per-module temporaries fragment it). Measured on all-MiniLM-L6-v2, batch 4 x 3 texts x 512 tokens, float32, 3 steps:
# peak RSS 2.31 GiB full (plan 2.28) and 2.53 GiB LoRA r16 (plan 2.51).
CPU_SLACK = {"full": 0.5, "lora": 1.05}


@dataclass(frozen=True)
class EncoderShape:
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    positions: int  # learned position embeddings (BERT); 0 for rotary decoders
    type_vocab: int
    decoder: bool

    def layer_linears(self) -> dict[str, tuple[int, int]]:
        """One layer's linear modules (in, out), the ones LoRA's all-linear targets."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        if self.decoder:
            return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, i), "up": (h, i), "down": (i, h)}
        return {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "up": (h, i), "down": (i, h)}

    def params(self, head: str = "none") -> int:
        """head: none (AutoModel), lm (a causal LM's output layer, read by a yes/no reranker), or the number of labels
        of a classification head as a string ("1" = a reranker's score head)."""
        h = self.hidden
        linears = sum(a * b for a, b in self.layer_linears().values())
        if self.decoder:
            per_layer = linears + 2 * h
            body = self.vocab * h + self.layers * per_layer + h
        else:  # biases on every linear, two LayerNorms per layer, embedding LayerNorm, the pooler
            biases = sum(b for _, b in self.layer_linears().values())
            per_layer = linears + biases + 4 * h
            body = (self.vocab + self.positions + self.type_vocab) * h + 2 * h + self.layers * per_layer + h * h + h
        if head == "lm":
            return body + self.vocab * h
        if head.isdigit():
            return body + int(head) * (h + (0 if self.decoder else 1))
        return body

    def lora_params(self, rank: int) -> int:
        per_layer = sum(rank * (a + b) for a, b in self.layer_linears().values())
        pooler = 0 if self.decoder else 2 * rank * self.hidden  # BertModel's pooler dense is a linear too
        return self.layers * per_layer + pooler


def encoder_shape(config: dict[str, Any]) -> EncoderShape:
    archs = config.get("architectures") or []
    decoder = bool(config.get("is_decoder")) or any(a.endswith("ForCausalLM") for a in archs)
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    return EncoderShape(
        model_type=str(config.get("model_type", "bert")), vocab=int(config["vocab_size"]), hidden=hidden,
        layers=int(config["num_hidden_layers"]), heads=heads, kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads), intermediate=int(config["intermediate_size"]),
        positions=0 if decoder else int(config.get("max_position_embeddings", 512)),
        type_vocab=0 if decoder else int(config.get("type_vocab_size", 0)), decoder=decoder)


def texts_per_row(task: str, negatives: int = 1, loss: str = "bce", max_documents: int = 8) -> int:
    if task == "embedding":
        return 2 + negatives
    if task == "reranker":
        return 1 if loss == "bce" else max_documents
    return 1


def head_of(task: str, shape: EncoderShape, labels: int = 2, reranker_head: str = "auto") -> str:
    if task == "embedding":
        return "none"
    if task == "reranker":
        return "lm" if shape.decoder and reranker_head in ("auto", "yes-no") else "1"
    return str(labels)


def estimate_encoder(config: dict[str, Any], task: str, setup: Setup, texts: int, head: str | None = None) -> Estimate:
    """Peak bytes of one training step of an encoder task (setup: method full|lora|dora, dtype, micro_batch, seq)."""
    shape = encoder_shape(config)
    head = head or head_of(task, shape)
    a = DTYPE_BYTES[setup.dtype]
    params = shape.params(head)
    new_head = int(head) * (shape.hidden + 1) if head.isdigit() else 0
    if setup.method == "full":
        trainable, grad_bytes = params, a
    else:  # peft keeps a trainable copy of a new head (modules_to_save) beside the frozen one
        trainable, grad_bytes = shape.lora_params(setup.lora_rank) + new_head, 4
        params += shape.lora_params(setup.lora_rank) + new_head
    seq = min(setup.seq, shape.positions) if shape.positions else setup.seq
    tokens = setup.micro_batch * texts * seq
    width = 3 if shape.decoder else 2
    act = shape.layers * tokens * a * (9 * shape.hidden + width * shape.intermediate)
    if setup.checkpointing:
        act = shape.layers * tokens * a * shape.hidden + act / shape.layers  # layer inputs + one layer recomputed
    parts = {"weights": params * a, "gradients": trainable * grad_bytes, "optimizer": trainable * ADAM_STATE_BYTES,
             "activations": act, "logits": (tokens // max(seq, 1)) * shape.vocab * 4 if head == "lm" else 0.0}
    if setup.device == "cpu":
        parts["fragmentation"] = CPU_SLACK["full" if setup.method == "full" else "lora"] * act
        parts["runtime"] = CPU_RUNTIME
    else:
        parts["fragmentation"] = FRAGMENTATION * sum(parts.values())
        parts["context"] = CUDA_CONTEXT if setup.device == "cuda" else 0.0
    notes = [f"{texts} text(s) per row of up to {seq} tokens each; batches pad to their longest text, so short texts "
             "need less"]
    return Estimate(parts, {"step": sum(parts.values())}, params, trainable, 0.0, notes)


def estimate_for_run(cfg: Any, config: dict[str, Any], device: str, dtype: str) -> Estimate:
    """train/preflight.py's plan for `tunesmith sft --task ...` (this config on this device)."""
    from dataclasses import replace

    shape = encoder_shape(config)
    texts = texts_per_row(cfg.task, 1, cfg.reranker.loss, cfg.reranker.max_documents)
    labels = max(2, len(cfg.classification.labels))
    setup = replace(Setup(), method="full" if cfg.tuner == "full" else "lora", dtype=dtype, lora_rank=cfg.lora.rank,
                    seq=cfg.max_length, micro_batch=cfg.batch_size, checkpointing=bool(cfg.gradient_checkpointing),
                    device=device)
    return estimate_encoder(config, cfg.task, setup, texts, head_of(cfg.task, shape, labels, cfg.reranker.head))


def plan_encoder(cfg: Any, hw: Any) -> dict[str, Any]:
    """`tunesmith plan MODEL --task embedding|reranker|classification`: the training step of that task, full and
    LoRA side by side (or the tuner asked for), in plan/run.py's result shape (so print_plan and --json work)."""
    from tunesmith.plan.model_shape import read_config
    from tunesmith.plan.recommend import FIT
    from tunesmith.plan.report import estimate_dict, print_plan, settings_dict

    config, source = read_config(cfg.model)
    shape = encoder_shape(config)
    device = "cuda" if cfg.gpu_memory or hw.gpus else hw.device
    memory = cfg.gpu_memory or hw.memory_gib()
    dtype = cfg.dtype if cfg.dtype != "auto" else "bfloat16" if cfg.gpu_memory or (
        hw.gpus and all(g.bf16 for g in hw.gpus)) else "float32"
    texts = texts_per_row(cfg.task)
    method = cfg.tuner if cfg.tuner in ("full", "lora", "dora") else "lora" if cfg.tuner == "auto" else None
    if method is None:
        from tunesmith.errors import ConfigError

        raise ConfigError(f"tuner: task {cfg.task} trains with lora, dora or full (got {cfg.tuner})")
    setup = Setup(method="lora" if method == "dora" else method, dtype=dtype, lora_rank=cfg.lora_rank,
                  seq=cfg.max_length, micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
                  checkpointing=bool(cfg.gradient_checkpointing), device=device)
    est = estimate_encoder(config, cfg.task, setup, texts)
    fits = est.total <= FIT * memory * GIB
    source_note = ("--gpu-memory" if cfg.gpu_memory else f"free memory of {hw.gpus[0].name}" if hw.gpus
                   else "available RAM, no GPU found")
    result: dict[str, Any] = {
        "model": {"name": cfg.model, "model_type": shape.model_type, "params": shape.params(head_of(cfg.task, shape)),
                  "layers": shape.layers, "hidden": shape.hidden, "vocab": shape.vocab, "task": cfg.task},
        "hardware": hw.as_dict(), "memory_gib": round(memory, 2), "memory_source": source_note, "world_size": 1,
        "mode": "training", "notes": list(hw.problems) + est.notes + [f"config: {source}"],
        "recommended": {"settings": {**settings_dict(setup), "method": method}, "fits": fits,
                        "estimate": estimate_dict(est)},
        "fits": fits,
    }
    verdict = "fits" if fits else "does not fit"
    result["message"] = (f"{verdict}: {cfg.task} with {method} needs about {est.total / GIB:.1f} of {memory:.1f} GiB "
                         f"(batch {cfg.batch_size} x {texts} text(s) of up to {cfg.max_length} tokens)")
    if fits:
        result["command"] = (f"tunesmith sft --task {cfg.task} --model {cfg.model} --tuner {method} --batch-size "
                             f"{cfg.batch_size} --max-length {cfg.max_length} --dataset DATA")
    print_plan(result, as_json=cfg.json)
    return result
