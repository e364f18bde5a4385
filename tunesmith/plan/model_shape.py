"""A decoder model's shape from its config.json alone, and exact parameter counts from that shape.

    shape = load_shape("qwen2.5-7b-instruct")      # reads config.json only: never the weights
    shape.params()                                  # 7_615_616_512, equal to sum(p.numel()) of the real model
    shape.lora_params(rank=16, targets="all-linear")

The counts follow the modeling files of transformers 5 for llama, qwen2, qwen3, mistral, gemma(2/3) and phi3, and
for the mixture-of-experts models qwen3_moe, qwen2_moe, mixtral, olmoe, deepseek_v2, deepseek_v3 (multi-head latent
attention) and gpt_oss; the tests build each family on the meta device and compare with
`sum(p.numel() for p in model.parameters())`.

Mixture of experts (transformers 5 keeps a layer's experts in fused 3D weights, experts.gate_up_proj and
experts.down_proj, which are not nn.Linear): `linear_modules()` are a layer's nn.Linear layers (attention, and the
shared experts or the dense MLP), what LoRA's all-linear and QLoRA's 4-bit reach; `expert_params()` and
`router_params()` are the rest of an MoE layer. Every expert's weights are stored; a token runs through `top_k` of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.config.sections import ALL_LINEAR
from tunesmith.errors import ConfigError, ModelNotFoundError

# model_type -> (q/k/v biases, o bias, norms per layer, q/k norms, fused qkv and gate_up, tied by default).
# Sources: transformers/models/<family>/modeling_<family>.py. Qwen2 hard-codes bias=True on q/k/v only; Gemma 2/3 add
# pre/post feed-forward norms (4 per layer); Qwen3 and Gemma 3 normalise q and k per head (q_norm, k_norm of head_dim);
# Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj (same parameter count, fewer LoRA modules).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "mistral": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "qwen2": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    # Qwen2-VL / 2.5-VL language models: Qwen2's layers (their text_config's model_type; the hub's flat config.json
    # files name the whole model's)
    "qwen2_vl_text": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    "qwen2_5_vl_text": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    "qwen2_vl": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    "qwen2_5_vl": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    "qwen3": dict(norms=2, qk_norm=True, fused=False, tied=False),
    "gemma": dict(norms=2, qk_norm=False, fused=False, tied=True),
    "gemma2": dict(norms=4, qk_norm=False, fused=False, tied=True),
    "gemma3_text": dict(norms=4, qk_norm=True, fused=False, tied=True),
    "phi3": dict(norms=2, qk_norm=False, fused=True, tied=False),
    # mixture of experts; OLMoE normalises the whole q and k projections (q_norm of q_dim, k_norm of kv_dim)
    "qwen3_moe": dict(norms=2, qk_norm=True, fused=False, tied=False),
    "qwen2_moe": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    "mixtral": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "olmoe": dict(norms=2, qk_norm="full", fused=False, tied=False),
    "deepseek_v2": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "deepseek_v3": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "gpt_oss": dict(norms=2, qk_norm=False, fused=False, tied=False, attention_bias=True),  # its config's default
}
# peft 0.21.2 on DeepSeek's MoE layers with all-linear: the fused experts get adapters whatever is asked and the MLP
# linears none (their names are the experts'; tests/models/test_families.py, models/families.py experts_always)
ATTENTION_ONLY_LORA = ("deepseek_v2", "deepseek_v3")
# Mixture-of-experts config.json keys (transformers 5.23 configs): routed experts, one expert's width (None: the
# config's intermediate_size), the shared experts' width (a key, or "deepseek": n_shared_experts x moe width), and the
# load-balancing loss coefficient when config.json leaves it out (TRL trains with it and returns the router logits
# when it is not 0; DeepSeek's configs have none).
MOE: dict[str, dict[str, Any]] = {
    "qwen3_moe": dict(experts="num_experts", width="moe_intermediate_size", aux=0.001),
    "qwen2_moe": dict(experts="num_experts", width="moe_intermediate_size", shared="shared_expert_intermediate_size",
                      aux=0.001),
    "mixtral": dict(experts="num_local_experts", width=None, aux=0.001),
    "olmoe": dict(experts="num_experts", width=None, aux=0.01),
    "deepseek_v2": dict(experts="n_routed_experts", width="moe_intermediate_size", shared="deepseek", aux=0.0),
    "deepseek_v3": dict(experts="n_routed_experts", width="moe_intermediate_size", shared="deepseek", aux=0.0),
    "gpt_oss": dict(experts="num_local_experts", width=None, aux=0.001),
}

# The registry's hub models, from their config.json (model_type, vocab, hidden, intermediate, layers, heads, kv_heads,
# head_dim, tied), so that `tunesmith plan <registry name>` works offline too. Their counts equal the published ones
# (tests/plan/test_model_shape.py).
BUILTIN = {
    "qwen2.5-0.5b-instruct": ("qwen2", 151936, 896, 4864, 24, 14, 2, 64, True),
    "qwen2.5-1.5b-instruct": ("qwen2", 151936, 1536, 8960, 28, 12, 2, 128, True),
    "qwen2.5-7b-instruct": ("qwen2", 152064, 3584, 18944, 28, 28, 4, 128, False),
    "qwen3-8b": ("qwen3", 151936, 4096, 12288, 36, 32, 8, 128, False),
    "llama-3.2-1b-instruct": ("llama", 128256, 2048, 8192, 16, 32, 8, 64, True),
    "llama-3.1-8b-instruct": ("llama", 128256, 4096, 14336, 32, 32, 8, 128, False),
    "mistral-7b-instruct": ("mistral", 32768, 4096, 14336, 32, 32, 8, 128, False),
    "gemma-2-2b-it": ("gemma2", 256000, 2304, 9216, 26, 8, 4, 256, True),
    "phi-3.5-mini-instruct": ("phi3", 32064, 3072, 8192, 32, 32, 32, 96, False),
}


def builtin_config(name: str) -> dict[str, Any]:
    keys = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "tie_word_embeddings")
    return dict(zip(keys, BUILTIN[name]))


@dataclass(frozen=True)
class ModelShape:
    name: str
    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    norms_per_layer: int = 2
    qk_norm: bool = False
    fused: bool = False
    assumed_layout: bool = False  # model_type not in FAMILIES: counted as a llama-style decoder
    source: str = ""              # where the config came from (shown in the plan)
    qk_norm_full: bool = False    # OLMoE: q_norm and k_norm over the whole projections, not per head
    # Mixture of experts (0 experts: a dense model)
    experts: int = 0              # routed experts per MoE layer
    top_k: int = 0                # experts each token runs through
    expert_intermediate: int = 0  # one expert's SwiGLU width
    shared_intermediate: int = 0  # the always-on shared experts' width (Qwen2-MoE, DeepSeek)
    shared_gate: bool = False     # Qwen2-MoE: a sigmoid gate, Linear(hidden, 1), on the shared expert
    dense_layers: int = 0         # layers with a dense MLP of `intermediate` (DeepSeek's first_k_dense_replace)
    moe_bias: bool = False        # gpt-oss: biases on the router and every expert
    sinks: bool = False           # gpt-oss: a learned attention sink per head
    router_aux: bool = False      # a load-balancing loss: the router logits of every layer live until the loss
    mla: tuple[int, int, int, int, int] | None = None  # DeepSeek's latent attention: q_lora_rank (0: none),
    #                               kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim
    vision: Any = None            # a vision-language model's tower (plan/vision.py VisionTower); None: text only

    @property
    def moe(self) -> bool:
        return self.experts > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.dense_layers if self.moe else 0

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def v_dim(self) -> int:
        """Width of the values and the attention output (MLA: heads x v_head_dim)."""
        return self.heads * self.mla[4] if self.mla else self.kv_dim

    def kv_cache_width(self) -> int:
        """Keys and values cached per token and layer (transformers caches MLA's keys and values expanded)."""
        return self.kv_dim + (self.v_dim if self.mla else self.kv_dim)

    @property
    def active_intermediate(self) -> int:
        """SwiGLU width a token runs through in an MoE layer: its top_k experts and the shared ones."""
        return self.top_k * self.expert_intermediate + self.shared_intermediate if self.moe else self.intermediate

    # -------------------------------------------------------------------------
    # Parameter counts

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """The linear layers of one decoder layer (of an MoE layer in an MoE model): name -> (in, out)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        if self.fused:
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {**self.attention_modules(), **self.mlp_modules(i if not self.moe else self.shared_intermediate)}

    def attention_modules(self) -> dict[str, tuple[int, int]]:
        h, q, kv = self.hidden, self.q_dim, self.kv_dim
        if self.mla:
            q_rank, kv_rank, nope, rope, _ = self.mla
            query = {"q_a_proj": (h, q_rank), "q_b_proj": (q_rank, q)} if q_rank else {"q_proj": (h, q)}
            return {**query, "kv_a_proj_with_mqa": (h, kv_rank + rope),
                    "kv_b_proj": (kv_rank, self.heads * (nope + self.mla[4])), "o_proj": (self.v_dim, h)}
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}

    def mlp_modules(self, width: int) -> dict[str, tuple[int, int]]:
        h = self.hidden
        return {"gate_proj": (h, width), "up_proj": (h, width), "down_proj": (width, h)} if width else {}

    def layer_linear_params(self) -> int:
        """Weights and biases of one layer's linear modules (the part QLoRA stores in 4 bits, biases aside)."""
        return sum(a * b for a, b in self.linear_modules().values()) + self.layer_bias_params()

    def layer_bias_params(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return ((q + 2 * kv) if self.qkv_bias else 0) + (h if self.o_bias else 0) + ((2 * i + h) if self.mlp_bias else 0)

    def layer_norm_params(self) -> int:
        qk = (self.q_dim + self.kv_dim if self.qk_norm_full else 2 * self.head_dim) if self.qk_norm else 0
        mla = (self.mla[0] + self.mla[1]) if self.mla else 0  # q_a_layernorm, kv_a_layernorm
        return self.norms_per_layer * self.hidden + qk + mla + (self.heads if self.sinks else 0)

    def expert_params(self) -> int:
        """One MoE layer's routed experts: gate_up (2 x width x hidden) and down per expert, gpt-oss's biases."""
        e, h, w = self.experts, self.hidden, self.expert_intermediate
        return e * 3 * h * w + (e * (2 * w + h) if self.moe_bias else 0)

    def router_params(self) -> int:
        return self.experts * self.hidden + (self.experts if self.moe_bias else 0) + (self.hidden if self.shared_gate else 0)

    def dense_mlp_params(self) -> int:
        """What a dense layer of an MoE model holds beyond an MoE layer's linears (DeepSeek's first layers)."""
        return 3 * self.hidden * (self.intermediate - self.shared_intermediate)

    def layer_params(self) -> float:
        """All weights of one decoder layer, averaged over the layers (dense and MoE layers differ)."""
        moe = self.moe_layers * (self.expert_params() + self.router_params()) + self.dense_layers * self.dense_mlp_params()
        return self.layer_linear_params() + self.layer_norm_params() + moe / self.layers

    def linear_weight_params(self) -> int:
        """Weights of every nn.Linear in the decoder layers, biases aside: what QLoRA stores in 4 bits (bitsandbytes
        replaces nn.Linear only, so fused experts stay in the compute dtype)."""
        per_layer = self.layer_linear_params() - self.layer_bias_params()
        return self.layers * per_layer + self.dense_layers * self.dense_mlp_params()

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def lm_head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden  # tied: the head reuses the embedding matrix

    def params(self) -> int:
        per_layer = self.layer_linear_params() + self.layer_norm_params()
        moe = self.moe_layers * (self.expert_params() + self.router_params()) + self.dense_layers * self.dense_mlp_params()
        text = self.embedding_params() + self.layers * per_layer + moe + self.hidden + self.lm_head_params()  # + final norm
        return text + self.vision_params()

    def vision_params(self) -> int:
        """A vision-language model's tower and aligner (0 for a text model)."""
        return self.vision.params if self.vision is not None else 0

    def active_params(self) -> int:
        """Weights one token runs through: its top_k experts of each MoE layer, not all of them."""
        unused = self.moe_layers * (self.experts - self.top_k) * self.expert_params() // max(self.experts, 1)
        return self.params() - unused

    def breakdown(self) -> dict[str, int]:
        parts = {"embeddings": self.embedding_params(),
                 "attention+mlp": self.layers * self.layer_linear_params() + self.dense_layers * self.dense_mlp_params(),
                 "norms": self.layers * self.layer_norm_params() + self.hidden, "lm_head": self.lm_head_params()}
        if self.moe:
            parts["experts+routers"] = self.moe_layers * (self.expert_params() + self.router_params())
        if self.vision is not None:
            parts["vision tower+aligner"] = self.vision_params()
        return parts

    def lora_modules(self, targets: str | list[str] | tuple[str, ...] = "all-linear") -> dict[str, tuple[int, int]]:
        """Targeted modules of one layer. peft's all-linear = every nn.Linear except the output layer (lm_head)."""
        modules = self.linear_modules()
        targets = all_linear(targets)
        if targets == "all-linear" and self.model_type in ATTENTION_ONLY_LORA:
            return self.attention_modules()
        if targets == "all-linear":
            return modules
        names = [targets] if isinstance(targets, str) else list(targets)
        unknown = [n for n in names if n not in modules]
        if unknown:
            # a ConfigError, not a traceback: sft's preflight reaches here through the memory plan (train/preflight.py)
            raise ConfigError(f"lora.targets: no module {', '.join(unknown)} in a {self.model_type} layer; its linear "
                              f"modules are {', '.join(modules)}: name some of these, or all (all-linear: every "
                              "linear layer but the output head)")
        return {n: modules[n] for n in names}

    def lora_params(self, rank: int, targets: str | list[str] | tuple[str, ...] = "all-linear", dora: bool = False,
                    experts: bool = False) -> int:
        """A (rank x in) + B (out x rank) per targeted module and layer; DoRA adds a magnitude vector (out). MoE:
        DeepSeek's dense layers have a wider MLP; `experts` (lora.experts) adds peft's target_parameters adapters,
        rank x experts wide, on both fused weights: A (r·E x in) and B (out x r·E) each."""
        modules = self.lora_modules(targets)
        per_layer = sum(rank * (a + b) + (b if dora else 0) for a, b in modules.values())
        total = self.layers * per_layer
        if self.dense_layers:
            wider = self.mlp_modules(self.intermediate)
            every = all_linear(targets) == "all-linear" and self.model_type not in ATTENTION_ONLY_LORA
            total += self.dense_layers * sum(rank * (a + b) + (b if dora else 0) for n, (a, b) in wider.items()
                                             if every or n in modules) - self.dense_layers * sum(
                rank * (a + b) + (b if dora else 0) for n, (a, b) in self.mlp_modules(self.shared_intermediate).items()
                if every or n in modules)
        if experts and self.moe:
            h, w = self.hidden, self.expert_intermediate
            # peft 0.21.2 wraps DeepSeek's gate_up twice (asked for, and matched by name): twice the rank there
            twice = 2 if self.model_type in ATTENTION_ONLY_LORA else 1
            total += self.moe_layers * rank * self.experts * (twice * (h + 2 * w) + (w + h))
        return total


def all_linear(targets: str | list[str] | tuple[str, ...]) -> str | list[str] | tuple[str, ...]:
    """"all-linear" for every spelling of it: peft's all-linear, LLaMA-Factory's all, alone or as a one-item list (as
    the config's LoraCfg reads them; plan's lora_targets and a sft file's lora section reach here unread)."""
    items = [targets] if isinstance(targets, str) else list(targets)
    return "all-linear" if len(items) == 1 and str(items[0]).strip().lower() in ALL_LINEAR \
        else targets


# -----------------------------------------------------------------------------
# Reading config.json


def shape_from_config(cfg: dict[str, Any], name: str = "model") -> ModelShape:
    """Build the shape from a config.json mapping (multimodal configs: their text_config)."""
    if isinstance(cfg.get("text_config"), dict):
        top = cfg
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
        if "tie_word_embeddings" not in cfg and "tie_word_embeddings" in top:  # VLMs keep it beside text_config
            cfg["tie_word_embeddings"] = top["tie_word_embeddings"]
    model_type = str(cfg.get("model_type", "llama"))
    if model_type not in MOE and any(cfg.get(k) for k in ("num_local_experts", "num_experts", "n_routed_experts")):
        raise ValueError(f"{name}: mixture-of-experts model_type {model_type!r} is not covered by `tunesmith plan` "
                         f"yet (covered: {', '.join(MOE)})")
    family = FAMILIES.get(model_type, FAMILIES["llama"])
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        shape = ModelShape(
            name=name, model_type=model_type, vocab=int(cfg["vocab_size"]), hidden=hidden,
            layers=int(cfg["num_hidden_layers"]), heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate=int(cfg["intermediate_size"]),
            tied=bool(cfg.get("tie_word_embeddings", family["tied"])),
            qkv_bias=bool(family.get("qkv_bias") or cfg.get("attention_bias", family.get("attention_bias", False))),
            o_bias=bool(cfg.get("attention_bias", family.get("attention_bias", False))) and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            norms_per_layer=family["norms"], qk_norm=bool(family["qk_norm"]), fused=family["fused"],
            assumed_layout=model_type not in FAMILIES, qk_norm_full=family["qk_norm"] == "full",
        )
        if model_type in ("qwen2_vl_text", "qwen2_5_vl_text", "qwen2_vl", "qwen2_5_vl"):
            shape = replace(shape, o_bias=False)  # q/k/v biases only, as Qwen2
        if model_type in MOE:
            shape = _moe_shape(shape, cfg, MOE[model_type])
    except KeyError as err:
        raise ValueError(f"{name}: config.json has no {err.args[0]}; is it a decoder language model?") from None
    return shape


def _moe_shape(shape: ModelShape, cfg: dict[str, Any], keys: dict[str, Any]) -> ModelShape:
    """The expert counts and widths of an MoE config (transformers 5.23's keys and defaults)."""
    # config.json from transformers 5 may name the count num_local_experts whatever the model (attribute_map)
    found = next((cfg[k] for k in (keys["experts"], "num_local_experts", "num_experts") if cfg.get(k)), None)
    if found is None:
        raise KeyError(keys["experts"])
    experts, layers = int(found), shape.layers
    width = int(cfg[keys["width"]]) if keys["width"] else shape.intermediate
    if keys.get("shared") == "deepseek":
        shared = int(cfg.get("n_shared_experts") or 0) * width
    else:
        shared = int(cfg.get(keys["shared"]) or 0) if keys.get("shared") else 0
    if "first_k_dense_replace" in cfg or keys.get("shared") == "deepseek":
        dense = min(int(cfg.get("first_k_dense_replace") or 0), layers)
    else:  # Qwen: mlp_only_layers, or every decoder_sparse_step-th layer sparse
        only, step = set(cfg.get("mlp_only_layers") or []), int(cfg.get("decoder_sparse_step") or 1)
        dense = sum(1 for i in range(layers) if i in only or (i + 1) % step != 0)
    mla = None
    if cfg.get("kv_lora_rank"):
        mla = (int(cfg.get("q_lora_rank") or 0), int(cfg["kv_lora_rank"]), int(cfg["qk_nope_head_dim"]),
               int(cfg["qk_rope_head_dim"]), int(cfg["v_head_dim"]))
    gpt_oss = shape.model_type == "gpt_oss"
    return replace(
        shape, experts=experts, top_k=int(cfg.get("num_experts_per_tok") or cfg.get("experts_per_token") or 1),
        expert_intermediate=width, shared_intermediate=shared, shared_gate=shape.model_type == "qwen2_moe" and shared > 0,
        dense_layers=dense, moe_bias=gpt_oss, sinks=gpt_oss, mla=mla,
        router_aux=float(cfg.get("router_aux_loss_coef", keys["aux"]) or 0) != 0,
        **({"heads": shape.heads, "kv_heads": shape.heads, "head_dim": mla[2] + mla[3]} if mla else {}))


def read_config(model: str) -> tuple[dict[str, Any], str]:
    """config.json of a local folder, a registry name or a hub id; downloads that one file at most."""
    from tunesmith.models.registry import MODELS

    path = Path(model).expanduser()
    if path.is_file() and path.name.endswith(".json"):
        return json.loads(path.read_text(encoding="utf-8")), str(path)
    if path.is_dir() or (model in MODELS and MODELS[model].hub_id is None):
        from tunesmith.models.load import resolve  # folders and the embedded model: no network, no weights

        folder = resolve(model)
        return json.loads((folder / "config.json").read_text(encoding="utf-8")), str(folder / "config.json")
    repo = MODELS[model].hub_id if model in MODELS else model
    if model.startswith((".", "/", "~")) or repo is None or repo.count("/") != 1:
        raise ModelNotFoundError(f"model {model!r}: no such folder, registry name or hub id (org/name). "
                                 f"Registry: {', '.join(MODELS)}")
    try:
        return json.loads(Path(_hub_config(repo)).read_text(encoding="utf-8")), f"{repo}/config.json"
    except ModelNotFoundError:
        name = next((n for n, e in MODELS.items() if e.hub_id == repo and n in BUILTIN), None)
        if name is None:
            raise
        return builtin_config(name), f"built-in shape of {name} (its config.json is not cached and the hub is offline)"


def _hub_config(repo: str) -> str:
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, "config.json", local_files_only=True)  # the cache first: works offline
    except Exception:  # noqa: BLE001 - not cached; huggingface_hub raises several types for this
        pass
    from tunesmith.hub import hub_reachable

    if not hub_reachable():
        raise ModelNotFoundError(
            f"{repo}: its config.json is not in the hub cache and the hub cannot be reached from here. Pass a local "
            f"folder or a config.json path instead, or run `tunesmith download {repo}` where there is internet.")
    try:
        return hf_hub_download(repo, "config.json")
    except Exception as err:  # noqa: BLE001 - gated, missing or misspelled repos
        raise ModelNotFoundError(f"{repo}: could not fetch config.json ({type(err).__name__}: {err}); check the "
                                 "id, or accept the model's license on the hub and log in (gated models).") from None


def load_shape(model: str, image_size: int | None = None) -> ModelShape:
    """The language model's shape; a vision-language model's also carries its tower (plan/vision.py), with the image
    tokens of a picture `image_size` pixels wide (None: the family's usual size)."""
    cfg, source = read_config(model)
    try:
        shape = replace(shape_from_config(cfg, name=model), source=source)
    except ValueError as err:
        raise ModelNotFoundError(f"{source}: {err}") from None
    if isinstance(cfg.get("vision_config"), dict):
        from tunesmith.plan.vision import vision_tower

        shape = replace(shape, vision=vision_tower(cfg, image_size))
    return shape
