"""Peak device memory of a training step or of serving, from the model's shape alone. Pure functions, no torch.

    est = estimate_training(shape, Setup(method="lora", seq=2048, micro_batch=1, checkpointing=True))
    est.total, est.breakdown()      # bytes per device: what is alive at the peak, summing to the total

The peak is the largest of the moments of a step (bench/plan_accuracy.py checks them against real GPUs):
  forward  DoRA only: all saved activations + peft's per-call temporaries in the last layer (dora_forward_bytes)
  loss     all saved activations + the loss buffers, at the start of backward
  backward saved activations + one layer's recomputed activations (checkpointing) + that layer's gradient temps
           (DoRA: the larger of its recompute's temporaries and its fp32 gradients)
  step     all gradients + the optimizer's temporaries (no activations left)
Weights and optimizer states are alive throughout. Sizes assume what tunesmith's trainer does (train/setup.py):
weights loaded in `dtype`, autocast on, LoRA weights upcast to fp32 by peft (adapter inputs left in the compute
dtype, train/speed.py), QLoRA in bf16 as LoRA with 4-bit linears (other dtypes: peft's prepare_model_for_kbit_training,
which upcasts embeddings, lm_head and norms to fp32). Logits: TRL 1.16's SFT path by default, whose chunked LM head
never builds the [tokens x vocab] logits; Setup(loss="model") models a plain loop on the model's own loss instead. On
an H100 the estimate of max_memory_allocated was within 2.3% on 24 measured configurations (Qwen2.5 0.5B/7B shapes;
full, LoRA, QLoRA; 2k-8k tokens; with/without checkpointing; both losses; LoRA dropout 0.05 and fp32-upcast QLoRA as
the trainer ran then), and within 3.3% on the LoRA and QLoRA rows again in today's way (+7.6% on a 7B QLoRA at 8k).
DoRA on an H200 (Dec 2026): within 1.5% on six configurations (0.5B and 7B, 2k-4k tokens, with/without checkpointing).
On CPU (device="cpu") the total is the process's peak RSS instead: the imports, live tensors and glibc's heap slack
(CPU_RUNTIME, CPU_HEAP_SLACK), and TRL's loss without Triton, which holds whole fp32 tiles (loss_bytes); within -2% to
+9% of `tunesmith sft` runs on SmolLM2-135M (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tunesmith.plan.model_shape import ModelShape
from tunesmith.plan.moe import attention_bytes, expert_copy_bytes, lora_experts, moe_block_bytes, router_logits_bytes

GIB = 1024**3
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# NF4 with double quantisation (QLoRA paper, Dettmers et al. 2023, sec. 3): 4 bits per weight, an 8-bit absmax per
# block of 64 weights, and an fp32 second-level constant per 256 blocks: 0.5 + 1/64 + 4/(64*256) bytes per weight.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# bitsandbytes 8-bit optimizers: 1 byte per state plus an fp32 absmax per block of 256 (bitsandbytes/optim/optimizer.py).
ADAM8_STATE_BYTES = 1 + 4 / 256
# TRL 1.16's fused LM head (trl/kernels/chunked_logprob.py): logit tiles of TOKEN_CHUNK_SIZE x _CHUNKED_LOGPROB_CHUNK_SIZE.
TRL_TILE = (4096, 32768)
# CUDA context, cuBLAS/cuDNN handles and kernels: outside torch's allocator, so max_memory_reserved does not show it;
# ~0.5-1 GiB on H100 with CUDA 12-13 (nvidia-smi's used memory minus torch.cuda.memory_reserved()).
CUDA_CONTEXT = int(0.75 * GIB)
# Caching-allocator slack (reserved - allocated) on the bench configs (bench/plan_accuracy.py, H100): 1-16% with
# TRL's chunked head (median 3%), 3-25% with a plain loop's fp32 logits (median 10%). Planned at 8%.
FRAGMENTATION = 0.08
# On a CPU what runs out is RAM, and the figure is the process's peak RSS (VmHWM), measured with `tunesmith sft` on the
# embedded SmolLM2-135M in float32 (docs/benchmarks.md, "`tunesmith plan` on CPU"): the import baseline of Python,
# torch, transformers, TRL, peft and datasets (0.47-0.50 GiB here) plus tokenizer, dataset and trainer, as one
# constant. Planned at 0.8: the CI machine's processes peaked ~0.2 GiB above ours on the same small run (2.18 GiB
# against 1.92-2.03), and the plan must not be the side that is short...
CPU_RUNTIME = int(0.8 * GIB)
# ...and glibc's heap. Its mmap threshold rises to the size of freed tensors (up to 32 MiB), so a layer's activations
# and temporaries land in the heap, which keeps the holes the freed ones leave and never shrinks: it grows with what the
# forward allocates, not only with what it keeps (a checkpointed forward, which keeps one tensor per layer, grew it by
# half as much). Per byte of activations a forward without checkpointing keeps, this much more is resident, with or
# without checkpointing. peft's LoRA forward frees three [tokens x out] temporaries per module (base output, B's
# output, its scaled copy) for the one it keeps; full fine-tuning leaves the fewest holes. Measured on 21 runs
# (identical runs differ by up to +-5 %: the heap's layout follows Python's allocation order): LoRA 0.48-0.78, QLoRA
# 0.31-0.49, DoRA 0.22-0.39, full 0.15-0.25; each planned near its top, so that the plan errs on the side of caution.
CPU_HEAP_SLACK = {"lora": 0.7, "qlora": 0.55, "dora": 0.4, "full": 0.25, "galore": 0.25, "lisa": 0.25, "freeze": 0.25}
ADAPTER_METHODS = ("lora", "qlora", "dora")
# peft's other adapters are planned as a LoRA of the same rank (train/tuners.py): their trainable weights are as many
# or fewer (VeRA and IA3 far fewer), their activations those of an adapter on the same inputs.
PLANNED_AS_LORA = ("adalora", "vera", "oft", "boft", "ia3", "loha", "lokr")
# Whole-model tuners that train a part of the layers: LISA (`trained_layers` sampled layers plus embeddings, final norm
# and LM head; the others hold no gradients or Adam states) and freeze (the last `trained_layers` layers only).
PARTIAL_METHODS = ("lisa", "freeze")
# What each linear of a layer reads: adapters on the same input share one saved tensor when nothing copies it.
ADAPTER_INPUTS = {"q_proj": "attention input", "k_proj": "attention input", "v_proj": "attention input",
                  "qkv_proj": "attention input", "o_proj": "attention output", "gate_proj": "mlp input",
                  "up_proj": "mlp input", "gate_up_proj": "mlp input", "q_a_proj": "attention input",
                  "kv_a_proj_with_mqa": "attention input"}  # the last two: DeepSeek's latent attention


@dataclass(frozen=True)
class Setup:
    method: str = "lora"              # full | lora | qlora | dora | galore | lisa | freeze
    trained_layers: int = 2           # lisa, freeze: decoder layers that train at a time
    private: bool = False             # DP-SGD (Opacus): a gradient per sample, and their clipped sum
    dtype: str = "bfloat16"
    optimizer: str = "adamw"          # adamw | adamw_8bit | paged_adamw_8bit | sgd
    lora_rank: int = 16               # also GaLore's projection rank
    lora_targets: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.0         # tunesmith's default; p > 0 stores a dropout mask per adapter input
    lora_experts: bool = False        # mixture of experts: adapters on every expert too (lora.experts)
    seq: int = 2048
    micro_batch: int = 1
    grad_accum: int = 1
    checkpointing: bool = False
    activation_offload: bool = False  # with checkpointing: layer inputs in pinned host RAM (train/offload.py)
    attn: str = "sdpa"                # sdpa | flash | eager | flex
    packing: bool = False
    padded: bool | None = None        # None: micro_batch > 1 without packing (TRL pads, so a mask exists)
    zero_stage: int = 0
    fsdp: bool = False
    world_size: int = 1
    offload: bool = False
    tensor_parallel: int = 1          # ranks sharing each layer's linears (world_size then counts data-parallel ranks)
    loss: str = "trl"                 # trl: TRL 1.16's chunked LM head | model: the model's own loss (full logits)
    kernels: str = "none"             # none | liger: liger's RMSNorm/RoPE/SwiGLU (train/speed.py) keep less for backward
    device: str = "cuda"              # cuda adds the CUDA context; cpu and mps have none
    images: int = 0                   # pictures per sample (vision-language models; their tokens are part of seq)
    reft_layers: int = 0              # reft: decoder layers with interventions (0 = every layer); rank is lora_rank
    reft_groups: int = 2              # reft: interventions per layer (positions f1+l1 unshared: 2; otherwise 1)


@dataclass
class Estimate:
    parts: dict[str, float]           # bytes per device alive at the peak; sums to total
    phases: dict[str, float]          # total bytes at each moment of the step
    params: int
    trainable: int
    host_bytes: float = 0.0           # CPU RAM for offloaded states or weights
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    @property
    def allocated(self) -> float:
        """What torch.cuda.max_memory_allocated() should read (on CPU: the peak of live tensor bytes)."""
        outside = ("context", "runtime", "fragmentation")
        return self.total - sum(self.parts.get(k, 0) for k in outside)

    @property
    def reserved(self) -> float:
        return self.allocated + self.parts.get("fragmentation", 0)

    def breakdown(self, unit: float = GIB) -> dict[str, float]:
        return {k: round(v / unit, 3) for k, v in self.parts.items()}


# -----------------------------------------------------------------------------
# Parameters, weights, gradients, optimizer states


def fp32_upcast(s: Setup) -> bool:
    """QLoRA outside bf16: peft's prepare_model_for_kbit_training upcasts every weight that is not 4-bit (norms,
    embeddings, LM head) to fp32, so the hidden states are fp32 too. bf16 runs skip it (train/setup.py)."""
    return s.method == "qlora" and s.dtype != "bfloat16"


def trainable_params(shape: ModelShape, s: Setup) -> int:
    if s.method in ADAPTER_METHODS:
        return shape.lora_params(s.lora_rank, s.lora_targets, dora=s.method == "dora", experts=lora_experts(shape, s))
    layer = shape.layer_params()
    k = min(s.trained_layers, shape.layers)
    if s.method == "lisa":
        return shape.params() - (shape.layers - k) * layer
    if s.method == "freeze":
        return k * layer
    return shape.params()


def weight_bytes(shape: ModelShape, s: Setup) -> float:
    a = DTYPE_BYTES[s.dtype]
    if s.method == "qlora":
        linear = shape.linear_weight_params()  # nn.Linear only: an MoE's fused experts stay in the compute dtype
        return linear * NF4_BYTES + (shape.params() - linear) * (4 if fp32_upcast(s) else a)
    adapters = trainable_params(shape, s) * 4 if s.method in ADAPTER_METHODS else 0  # peft keeps adapters in fp32
    return shape.params() * a + adapters


def _state_bytes(s: Setup, param_bytes: int) -> float:
    """Optimizer state bytes per trainable weight. torch AdamW keeps exp_avg and exp_avg_sq in the parameter's dtype;
    HF's `sgd` is torch SGD without momentum (no state)."""
    return {"adamw": 2 * param_bytes, "sgd": 0.0}.get(s.optimizer, 2 * ADAM8_STATE_BYTES)


def optimizer_bytes(shape: ModelShape, s: Setup) -> float:
    a = DTYPE_BYTES[s.dtype]
    if s.method in ADAPTER_METHODS:
        return trainable_params(shape, s) * _state_bytes(s, 4)
    if s.method == "galore":
        # GaLore (Zhao et al. 2024): Adam states on the rank-r projection of each matrix, r x max(m, n), plus the fp32
        # projector r x min(m, n); embeddings, norms and head keep plain Adam states.
        r = s.lora_rank
        proj = sum(2 * r * max(m, n) * a + 4 * r * min(m, n) for m, n in shape.linear_modules().values())
        rest = shape.params() - shape.layers * shape.layer_linear_params()
        return shape.layers * proj + rest * _state_bytes(s, a)
    return trainable_params(shape, s) * _state_bytes(s, a)


# -----------------------------------------------------------------------------
# Activations: bytes saved for backward, per token and layer (autograd's saved tensors, counted from the modeling
# code and peft's LoRA forward; tests/plan/test_activations.py checks them with torch's saved-tensor hooks)


def layer_activation_bytes(shape: ModelShape, s: Setup) -> float:
    if shape.moe and shape.dense_layers:  # DeepSeek's first layers are dense: the average layer
        dense = layer_activation_bytes(replace(shape, experts=0, dense_layers=0), s)
        sparse = layer_activation_bytes(replace(shape, dense_layers=0), s)
        return (shape.dense_layers * dense + shape.moe_layers * sparse) / shape.layers
    act = DTYPE_BYTES[s.dtype]  # matmul outputs under autocast
    # MoE: the dense SwiGLU every token runs is the shared experts' (if any); the routed ones are moe_block_bytes
    h, q, kv, i = shape.hidden, shape.q_dim, shape.kv_dim, shape.shared_intermediate if shape.moe else shape.intermediate
    n_norms = shape.norms_per_layer
    liger = s.kernels == "liger"
    # RMSNorm: the model's computes in fp32 and keeps its fp32 input for backward; liger's keeps its input as it came
    # (the residual stream's dtype) and one fp32 reciprocal RMS per row.
    x_bytes = 4 if fp32_upcast(s) else act  # the residual stream
    norm = (lambda width: x_bytes * width + 4) if liger else (lambda width: 4 * width)
    total = n_norms * norm(h)
    if shape.qk_norm:
        total += norm(q) + norm(kv)
    total += act * (q + 2 * kv) + act * q + 4 * shape.heads  # q, k (after RoPE), v, attention output, fp32 logsumexp
    # SwiGLU: gate (SiLU input), SiLU output and up (the product's inputs); liger's fused SiLU-mul keeps only gate and
    # up and recomputes the SiLU. Upcast QLoRA's fp32 norms make the 4-bit layers' inputs fp32, and bitsandbytes
    # returns outputs in the input's dtype: these are fp32 there.
    total += (2 if liger else 3) * x_bytes * i
    if s.method in ADAPTER_METHODS:
        modules = shape.lora_modules(s.lora_targets)
        total += sum(act * s.lora_rank for _ in modules.values())  # A's output, kept for B
        # Autocast copies an fp32 input per adapter (QLoRA's upcast hidden states; DoRA's input, which peft casts to
        # the adapter's float32); training in float32 (CPU) copies nothing.
        if s.lora_dropout == 0 and not (act < 4 and (fp32_upcast(s) or s.method == "dora")):
            # Frozen linears keep nothing, and the adapters keep their inputs as they are (train/speed.py, step 5):
            # one copy per distinct input; o_proj's is the attention output, already kept by the attention.
            inputs = {ADAPTER_INPUTS.get(name, name): n_in for name, (n_in, _) in modules.items()}
            inputs.pop("attention output", None)
            total += act * sum(inputs.values())
        else:
            # Each adapter keeps its own input: dropped (lora_dropout > 0, plus the mask: CUDA 1 byte, CPU/MPS a noise
            # tensor in the input's dtype), or cast by autocast from float32 (QLoRA's fp32 hidden states; DoRA keeps
            # peft's cast to the adapter's float32).
            mask = 1 if s.device == "cuda" else 4 if s.method == "dora" or fp32_upcast(s) else act
            per_in = act + (mask if s.lora_dropout > 0 else 0)
            total += sum(per_in * n_in for n_in, _ in modules.values())
        if s.method == "dora":
            total += sum(2 * act * n_out for _, n_out in modules.values())  # base and adapter outputs for the magnitude
    else:
        # Trainable weights: each norm keeps its normalised input and its output (the next linears' input for their
        # weight gradient); down_proj keeps the SwiGLU product. o_proj reads the attention output, already counted;
        # q/k norms keep their normalised input (their output feeds RoPE, which keeps nothing).
        # liger's norms compute their weight gradient from their input and RMS, so only the output is kept there.
        if liger:
            total += n_norms * act * h + act * i
        else:
            total += n_norms * 2 * act * h + act * i + (act * (q + kv) if shape.qk_norm else 0)
    if (s.attn == "eager" or (_masked(s) and s.attn == "sdpa")) and shape.kv_heads != shape.heads:
        total += 2 * act * (q - kv)  # eager, and sdpa with a mask, repeat k and v to every head (no enable_gqa)
    return total + moe_block_bytes(shape, s) + attention_bytes(shape, s)


def _masked(s: Setup) -> bool:
    return s.packing or (s.padded if s.padded is not None else s.micro_batch > 1)


def attention_square_bytes(shape: ModelShape, s: Setup) -> tuple[float, float]:
    """(bytes saved per layer, bytes shared by all layers) that grow with seq^2: eager's attention probabilities
    (fp32 softmax output + its bf16 copy: 6 bytes per head and pair), and sdpa's masks when padding or packing."""
    b, n = s.micro_batch, s.seq
    pairs = (b * n) ** 2 if s.packing else b * n * n  # packing: one block-diagonal mask over the flattened batch
    if s.attn == "eager":
        return 6 * shape.heads * pairs, 2 * pairs
    if s.attn == "sdpa" and _masked(s):
        # transformers builds a bool mask once; torch's SDPA turns it into a float mask per call, which the
        # memory-efficient kernel keeps for backward.
        return DTYPE_BYTES[s.dtype] * pairs, pairs
    return 0.0, 0.0


def loss_bytes(shape: ModelShape, s: Setup) -> float:
    """Loss buffers at the start of backward for N = micro_batch x seq tokens."""
    n, v, h, a = s.micro_batch * s.seq, shape.vocab, shape.hidden, DTYPE_BYTES[s.dtype]
    if s.loss == "model":
        # transformers' ForCausalLMLoss upcasts the [N, V] logits to fp32; backward holds the saved log-softmax plus
        # two fp32 gradients of the same size: 12 bytes per token and vocabulary entry.
        # QLoRA's head is fp32 (peft upcasts it): autocast's bf16 copy of it is kept for the backward matmul.
        return 12.0 * n * v + (v * h * a if fp32_upcast(s) and a < 4 else 0)
    # TRL 1.16 SFT (our default): the fused LM head never builds [N, V]; it keeps the labelled hidden states, a
    # [4096 x 32768] logit tile, and in backward an fp32 grad of the hidden states (and of the head when it trains).
    rows = min(n, TRL_TILE[0])
    tile = rows * TRL_TILE[1] * a
    if s.device != "cuda":
        # No Triton (CPU, MPS): TRL folds each tile with torch ops on the whole tile (trl/kernels/chunked_logprob.py,
        # _backward_tile) and scores every position, labelled or not. Its backward holds, beside the tile, seven fp32
        # tiles at once (scaled logits, logits, log-probs, probs, gradient, one-hot target, its difference to the
        # probs) and a bool one: 2.3 GiB for the demo's 4 x 640 tokens, the largest single term of that run.
        tile += rows * min(v, TRL_TILE[1]) * (7 * 4 + 1)
    head_grad = (4 + a) * v * h if s.method in ("full", "galore", "lisa") else 0
    return tile + n * h * (2 * a + 4) + head_grad


def dora_forward_bytes(shape: ModelShape, s: Setup) -> float:
    """Bytes a DoRA module allocates and frees inside its own forward, the worst module of a layer; 0 for the others.

    peft 0.21 (tuners/lora/dora.py, DoraLinearLayer.forward) rebuilds, on every call, the dense update and the norm of
    the adapted weight: `lora_B(lora_A(eye(in)))` with an fp32 identity (autocast keeps a low-precision copy of it for
    A's weight gradient while the graph of that product lives), then `norm(W.to(fp32) + scale * BA.to(fp32))`, plus
    the layer's input cast to the adapter's fp32 (peft's cast; train/speed.py's patch skips DoRA). For down_proj of a
    7B (in 18,944) the identity alone is 1.3 GiB. None of it is saved, but it peaks on top of what is: in the forward
    of the last layer, and in every layer's recompute under checkpointing (bench/plan_accuracy.py, DoRA rows)."""
    if s.method != "dora":
        return 0.0
    a, n = DTYPE_BYTES[s.dtype], s.micro_batch * s.seq
    autocast = a < 4
    worst = 0.0
    for n_in, n_out in shape.lora_modules(s.lora_targets).values():
        eye_kept = (a if autocast else 4) * n_in * n_in  # the copy the graph saves (fp32: the identity itself)
        build = 4 * n_in * n_in + (a * n_in * n_in if autocast else 0) + a * n_in * n_out  # identity, copy, B·A
        # fp32 B·A, W's fp32 copy (none when W is fp32), scale·B·A and the sum whose norm is taken
        norm = eye_kept + 4 * n_in * n_out * (3 + (1 if autocast else 0))
        worst = max(worst, max(build, norm) + (4 * n * n_in if autocast else 0))
    return worst


def dora_backward_bytes(shape: ModelShape, s: Setup) -> float:
    """Gradient temporaries of the widest DoRA module's backward (gate/up with all-linear); 0 for the others.

    peft's DoRA output is fp32 (`(m/|W'| - 1) * base + m/|W'| * scale * B·A` with an fp32 magnitude), so its backward
    holds four fp32 [tokens x out] tensors at once (the incoming gradient cast up, three products) and two casts back
    to the compute dtype. By then down_proj's input copy and the SwiGLU product's two saved inputs are freed. Measured
    on an H200 for the 0.5B shape at 4 x 2048 tokens with checkpointing: without this term -9.5 %."""
    if s.method != "dora":
        return 0.0
    a, n = DTYPE_BYTES[s.dtype], s.micro_batch * s.seq
    per_out = 16 + (2 * a if a < 4 else 0)
    widest = max(n_out for _, n_out in shape.lora_modules(s.lora_targets).values())
    return max(0.0, per_out * n * widest - 3 * a * n * shape.intermediate)


def activation_phases(shape: ModelShape, s: Setup) -> dict[str, float]:
    """Activations and loss buffers alive at each moment: "loss" (start of backward), "backward" (the worst layer's
    backward, after its recompute under checkpointing) and, for DoRA without checkpointing, "forward" (the last
    layer's forward, where DoRA's per-call temporaries sit on top of every saved activation)."""
    n, a, h = s.micro_batch * s.seq, DTYPE_BYTES[s.dtype], shape.hidden
    layer = layer_activation_bytes(shape, s) * n
    per_layer_sq, shared_sq = attention_square_bytes(shape, s)
    layer += per_layer_sq
    # Gradient temporaries while one layer runs backward: the SwiGLU grads (3 x I) and the residual-stream grads.
    work = (3 * shape.active_intermediate + 4 * h) * a * n + (2 * per_layer_sq if s.attn == "eager" else 0)
    if s.method == "qlora":  # bitsandbytes dequantizes a weight for each 4-bit matmul, forward and backward
        work += 2 * max(n_in * n_out for n_in, n_out in shape.linear_modules().values()) * a
    final = (4 + 2 * a) * h * n + 2 * a * shape.head_dim * n + shared_sq  # final norm, RoPE cos/sin, mask
    final += router_logits_bytes(shape, s) * n  # MoE load-balancing loss: every layer's router logits
    copies = expert_copy_bytes(shape, s)  # lora.experts: a merged copy of each MoE layer's experts, kept for backward
    if s.method in ADAPTER_METHODS and s.dtype != "float32":
        final += trainable_params(shape, s) * a  # autocast's cached low-precision copies of the fp32 adapters
    dora = dora_forward_bytes(shape, s)
    work = max(work, dora_backward_bytes(shape, s))
    if s.checkpointing:
        # HF checkpoints each decoder layer (use_reentrant=False): only its input survives the forward. A layer's
        # recompute runs before its backward: DoRA's temporaries then, the gradient temporaries after.
        kept = shape.layers * (4 if fp32_upcast(s) else a) * h * n
        if s.activation_offload:  # on the GPU: the input of the layer in backward and the next one arriving
            kept *= min(2, shape.layers) / shape.layers
        return {"loss": kept + final + loss_bytes(shape, s),
                "backward": kept + final + layer + copies + max(work, dora)}
    kept = shape.layers * layer + shape.moe_layers * copies
    moments = {"loss": kept + final + loss_bytes(shape, s), "backward": kept + final + work}
    if dora:
        moments["forward"] = kept + final + dora
    return moments


# -----------------------------------------------------------------------------
# Training and inference estimates


def estimate_training(shape: ModelShape, s: Setup) -> Estimate:
    if s.method == "longlora":
        return _longlora(shape, s)
    if s.method == "reft":
        return _reft(shape, s)
    if s.method in PLANNED_AS_LORA:
        est = estimate_training(shape, replace(s, method="lora"))
        est.notes.append(f"{s.method}: planned as a LoRA of rank {s.lora_rank} on the same modules (an upper bound "
                         "for its adapter weights and states)")
        return est
    a, world = DTYPE_BYTES[s.dtype], max(1, s.world_size)
    trainable = trainable_params(shape, s)
    weights, opt = weight_bytes(shape, s), optimizer_bytes(shape, s)
    grad_bytes = 4 if s.method in ADAPTER_METHODS else a
    notes: list[str] = []
    grads = trainable * grad_bytes
    if s.private:
        grads *= s.micro_batch + 1  # Opacus' grad_sample per sample, and the clipped sum beside .grad
        notes.append(f"dp: {s.micro_batch} per-sample gradients of the {trainable:,} trainable weights")
    step_temp = trainable * grad_bytes if s.optimizer == "adamw" else 0  # foreach AdamW: sqrt(exp_avg_sq) copy
    host = 0.0
    held = tensor_parallel_share(shape, s.tensor_parallel)  # of every weight, its gradient and optimizer states
    weights, opt, grads, step_temp = weights * held, opt * held, grads * held, step_temp * held
    sharded = s.fsdp or s.zero_stage > 0
    if sharded:
        # ZeRO (Rajbhandari et al. 2020, sec. 3): mixed precision keeps an fp32 master copy with the Adam states
        # (K = 12 bytes per weight); stage 1 shards those, 2 also gradients, 3 also weights. FSDP full-shard ~ stage 3.
        stage = 3 if s.fsdp else s.zero_stage
        all_states = held * trainable * (_state_bytes(s, 4) + (4 if a < 4 else 0))  # fp32 states + master, all ranks'
        if s.tensor_parallel > 1:  # transformers' own FSDP2 keeps the weights' dtype: no fp32 master, states in it
            all_states = held * trainable * _state_bytes(s, a)
        opt = all_states / world
        if stage >= 2:
            grads /= world
        step_temp = 0.0  # DeepSpeed's fused Adam and FSDP update their shards in place
        if s.offload:  # ZeRO-Offload: states (and with stage 3 the weights) live in the host's RAM
            host, opt = all_states + (weights if stage >= 3 else 0.0), 0.0
            notes.append(f"offload: {host / GIB:.1f} GiB of states{' and weights' if stage >= 3 else ''} in CPU RAM")
        if stage >= 3:
            gathered = 2 * (shape.layer_params() - shape.layer_norm_params()) * a / s.tensor_parallel  # + prefetched
            weights = gathered + (0.0 if s.offload else weights / world)
            notes.append(f"ZeRO-3/FSDP gathers one layer at a time ({gathered / GIB:.2f} GiB incl. prefetch)")
    elif world > 1:
        grads *= 2  # DDP copies gradients into its all-reduce buckets (gradient_as_bucket_view is off in HF)
    moments = activation_phases(tensor_parallel_shape(shape, s.tensor_parallel), s)
    if s.checkpointing and s.activation_offload:
        offloaded = shape.layers * (4 if fp32_upcast(s) else a) * shape.hidden * s.micro_batch * s.seq
        host += offloaded
        notes.append(f"offloaded checkpointing: {offloaded / GIB:.2f} GiB of layer inputs in pinned CPU RAM")
    if s.tensor_parallel > 1:
        notes.append(f"tensor parallel {s.tensor_parallel}: each rank holds 1/{s.tensor_parallel} of the decoder's "
                     f"linears and LM head ({held:.0%} of the weights) and of the heads' and MLP's activations")
    if shape.vision is not None and s.images:  # the tower over the micro-batch's pictures, beside the decoder's
        from tunesmith.plan.vision import tower_activation_bytes

        tower = tower_activation_bytes(shape.vision, s.images, s.micro_batch, a, trained=s.method in ("full", "galore"))
        moments = {k: v + tower for k, v in moments.items()}
    # Before the last micro-batch of an accumulation, every gradient is already alive during backward; otherwise only
    # the ones produced so far (the head's first), which we count as the head's gradient for full training.
    head = shape.vocab * shape.hidden * grad_bytes if s.method in ("full", "galore", "lisa") else 0
    grads_in_backward = grads if s.grad_accum > 1 else min(grads, head)
    grads_at = {"forward": grads if s.grad_accum > 1 else 0.0, "loss": grads_in_backward, "backward": grads_in_backward}
    static = weights + opt
    phases = {k: static + grads_at[k] + v for k, v in moments.items()} | {"step": static + grads + step_temp}
    peak = max(phases, key=phases.get)
    if peak == "step":
        parts = {"weights": weights, "gradients": grads, "optimizer": opt + step_temp, "activations": 0.0, "logits": 0.0}
    else:
        logits = loss_bytes(shape, s) if peak == "loss" else 0.0
        act = moments[peak] - logits
        parts = {"weights": weights, "gradients": grads_at[peak], "optimizer": opt, "activations": act,
                 "logits": logits}
    allocated = sum(parts.values())
    if s.device == "cpu":  # RSS: the heap keeps what the forward made it grow to, through the step
        forward = activation_phases(shape, replace(s, checkpointing=False))["loss"] - loss_bytes(shape, s)
        parts["fragmentation"] = CPU_HEAP_SLACK.get(s.method, 0.7) * forward
        parts["runtime"] = CPU_RUNTIME
    else:
        parts["fragmentation"] = FRAGMENTATION * allocated
        parts["context"] = CUDA_CONTEXT if s.device == "cuda" else 0.0
    if s.attn == "sdpa" and s.packing:
        notes.append("packing with sdpa builds a (batch x seq)^2 mask; attn: flex or flash avoids it")
    if shape.moe:
        notes.append(f"mixture of experts: all {shape.experts} experts of {shape.moe_layers} layers are stored "
                     f"({shape.moe_layers * shape.expert_params() * a / GIB:.1f} GiB); each token's "
                     f"activations go through {shape.top_k} of them")
        if expert_copy_bytes(shape, s):
            notes.append(f"lora.experts: peft hands each MoE layer W + B·A, a copy of its experts kept for backward "
                         f"({expert_copy_bytes(shape, s) / GIB:.2f} GiB per layer)")
    if shape.assumed_layout:
        notes.append(f"model_type {shape.model_type!r} is counted as a llama-style decoder")
    return Estimate(parts, phases, shape.params(), trainable, host, notes)


def _reft(shape: ModelShape, s: Setup) -> Estimate:
    """LoReFT (models/reft.py): the frozen base's step, as a LoRA run without adapters counts it (backward through
    frozen layers keeps their activations, no weight gradients), plus the interventions: 2 x hidden x rank + rank fp32
    weights each, with gradients and optimizer states, and what each keeps for backward per token (its two rank-sized
    outputs in fp32 and the position mask)."""
    est = estimate_training(shape, replace(s, method="lora", lora_targets=(), lora_dropout=0.0))
    count = (s.reft_layers or shape.layers) * s.reft_groups
    weights = count * (2 * shape.hidden * s.lora_rank + s.lora_rank)
    static = weights * (4 + 4 + _state_bytes(s, 4))  # weights, gradients, optimizer states
    kept = count * s.micro_batch * s.seq * (2 * 4 * s.lora_rank + 1)
    est.parts["weights"] += weights * 4
    est.parts["gradients"] += weights * 4
    est.parts["optimizer"] += weights * _state_bytes(s, 4)
    est.parts["activations"] += kept
    est.phases = {k: v + static + (0 if k == "step" else kept) for k, v in est.phases.items()}
    est.trainable = weights
    est.notes.append(f"reft: {count} LoReFT interventions of rank {s.lora_rank} ({weights:,} weights) on the frozen "
                     "base; activations as a frozen-base step")
    return est


def _longlora(shape: ModelShape, s: Setup) -> Estimate:
    """LongLoRA (train/longlora.py): a LoRA run plus a trainable copy of the embeddings and every norm (peft's
    modules_to_save), with their gradients and Adam states in the compute dtype, counted as alive through the step.
    S2-Attn keeps what full attention keeps (sdpa saves no score matrix): the activations are LoRA's."""
    est = estimate_training(shape, replace(s, method="lora"))
    a = DTYPE_BYTES[s.dtype]
    full = shape.embedding_params() + shape.layers * shape.layer_norm_params() + shape.hidden
    copy, grads, states = full * a, full * a, full * _state_bytes(s, a)
    est.parts["weights"] += copy
    est.parts["gradients"] += grads
    est.parts["optimizer"] += states
    est.phases = {k: v + copy + grads + states for k, v in est.phases.items()}
    est.trainable += full
    est.notes.append(f"longlora: embeddings and norms train in full beside LoRA ({full:,} weights: copy, gradients "
                     f"and states {(copy + grads + states) / GIB:.2f} GiB)")
    return est


def tensor_parallel_share(shape: ModelShape, n: int) -> float:
    """Share of the weights one of n tensor-parallel ranks holds: transformers' tp plans shard every linear of the
    decoder layers (experts too) and an untied LM head; embeddings and norms stay whole on every rank."""
    if n == 1:
        return 1.0
    whole = shape.embedding_params() + shape.vision_params() + shape.layers * shape.layer_norm_params() + shape.hidden
    return (whole + (shape.params() - whole) / n) / shape.params()


def tensor_parallel_shape(shape: ModelShape, n: int) -> ModelShape:
    """One rank's part of each layer's attention heads and MLP width, for its activations."""
    if n == 1:
        return shape
    return replace(shape, heads=max(1, shape.heads // n), kv_heads=max(1, shape.kv_heads // n),
                   intermediate=max(1, shape.intermediate // n), expert_intermediate=shape.expert_intermediate // n,
                   shared_intermediate=shape.shared_intermediate // n)


def estimate_inference(shape: ModelShape, s: Setup, context: int) -> Estimate:
    """Serving: weights + KV cache (2 x layers x kv_heads x head_dim x context x batch x bytes) + prefill temps."""
    a, b = DTYPE_BYTES[s.dtype], s.micro_batch
    if s.method == "qlora":  # 4-bit linears; embeddings, head, norms (and fused experts) stay in the compute dtype
        linear = shape.linear_weight_params()
        weights = linear * NF4_BYTES + (shape.params() - linear) * a
    else:
        weights = shape.params() * a
    kv_cache = shape.layers * shape.kv_cache_width() * context * b * a
    n = b * context
    # Prefill of one layer: residual + normed input, q/k/v, attention output and the SwiGLU intermediates (gate, up and
    # their product); eager adds the fp32 scores and probabilities. The head scores the last token only, in fp32.
    prefill = (2 * shape.hidden + 2 * shape.q_dim + 2 * shape.kv_dim + 3 * shape.active_intermediate) * a * n
    if s.attn == "eager":
        prefill += 10 * shape.heads * b * context * context
    if shape.vision is not None and s.images:
        from tunesmith.plan.vision import tower_activation_bytes

        prefill += tower_activation_bytes(shape.vision, s.images, b, a, trained=False)
    logits = 4 * shape.vocab * b
    parts = {"weights": weights, "kv_cache": kv_cache, "activations": prefill, "logits": logits}
    parts["fragmentation"] = FRAGMENTATION * sum(parts.values())
    if s.device == "cpu":
        parts["runtime"] = CPU_RUNTIME
    else:
        parts["context"] = CUDA_CONTEXT if s.device == "cuda" else 0.0
    phases = {"prefill": sum(parts.values())}
    return Estimate(parts, phases, shape.params(), 0, 0.0, [])
