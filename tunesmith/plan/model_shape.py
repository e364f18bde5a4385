"""A decoder model's shape from its config.json alone, and exact parameter counts from that shape.

    shape = load_shape("qwen2.5-7b-instruct")      # reads config.json only: never the weights
    shape.params()                                  # 7_615_616_512, equal to sum(p.numel()) of the real model
    shape.lora_params(rank=16, targets="all-linear")

The counts follow the modeling files of transformers 5 for llama, qwen2, qwen3, mistral, gemma(2/3) and phi3; the
tests build each family on the meta device and compare with `sum(p.numel() for p in model.parameters())`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunesmith.errors import ModelNotFoundError

# model_type -> (q/k/v biases, o bias, norms per layer, q/k norms, fused qkv and gate_up, tied by default).
# Sources: transformers/models/<family>/modeling_<family>.py. Qwen2 hard-codes bias=True on q/k/v only; Gemma 2/3 add
# pre/post feed-forward norms (4 per layer); Qwen3 and Gemma 3 normalise q and k per head (q_norm, k_norm of head_dim);
# Phi-3 fuses q/k/v into qkv_proj and gate/up into gate_up_proj (same parameter count, fewer LoRA modules).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "mistral": dict(norms=2, qk_norm=False, fused=False, tied=False),
    "qwen2": dict(norms=2, qk_norm=False, fused=False, tied=False, qkv_bias=True),
    "qwen3": dict(norms=2, qk_norm=True, fused=False, tied=False),
    "gemma": dict(norms=2, qk_norm=False, fused=False, tied=True),
    "gemma2": dict(norms=4, qk_norm=False, fused=False, tied=True),
    "gemma3_text": dict(norms=4, qk_norm=True, fused=False, tied=True),
    "phi3": dict(norms=2, qk_norm=False, fused=True, tied=False),
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

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    # -------------------------------------------------------------------------
    # Parameter counts

    def linear_modules(self) -> dict[str, tuple[int, int]]:
        """The linear layers of one decoder layer: name -> (in_features, out_features)."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        if self.fused:
            return {"qkv_proj": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_proj": (h, 2 * i), "down_proj": (i, h)}
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def layer_linear_params(self) -> int:
        """Weights and biases of one layer's linear modules (the part QLoRA stores in 4 bits, biases aside)."""
        return sum(a * b for a, b in self.linear_modules().values()) + self.layer_bias_params()

    def layer_bias_params(self) -> int:
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return ((q + 2 * kv) if self.qkv_bias else 0) + (h if self.o_bias else 0) + ((2 * i + h) if self.mlp_bias else 0)

    def layer_norm_params(self) -> int:
        return self.norms_per_layer * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    def lm_head_params(self) -> int:
        return 0 if self.tied else self.vocab * self.hidden  # tied: the head reuses the embedding matrix

    def params(self) -> int:
        per_layer = self.layer_linear_params() + self.layer_norm_params()
        return self.embedding_params() + self.layers * per_layer + self.hidden + self.lm_head_params()  # + final norm

    def breakdown(self) -> dict[str, int]:
        return {"embeddings": self.embedding_params(), "attention+mlp": self.layers * self.layer_linear_params(),
                "norms": self.layers * self.layer_norm_params() + self.hidden, "lm_head": self.lm_head_params()}

    def lora_modules(self, targets: str | list[str] | tuple[str, ...] = "all-linear") -> dict[str, tuple[int, int]]:
        """Targeted modules of one layer. peft's all-linear = every nn.Linear except the output layer (lm_head)."""
        modules = self.linear_modules()
        if targets == "all-linear":
            return modules
        names = [targets] if isinstance(targets, str) else list(targets)
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"lora_targets: {', '.join(unknown)} not in a {self.model_type} layer; "
                             f"use all-linear or some of: {', '.join(modules)}")
        return {n: modules[n] for n in names}

    def lora_params(self, rank: int, targets: str | list[str] | tuple[str, ...] = "all-linear", dora: bool = False) -> int:
        """A (rank x in) + B (out x rank) per targeted module and layer; DoRA adds a magnitude vector (out)."""
        modules = self.lora_modules(targets).values()
        per_layer = sum(rank * (a + b) + (b if dora else 0) for a, b in modules)
        return self.layers * per_layer


# -----------------------------------------------------------------------------
# Reading config.json


def shape_from_config(cfg: dict[str, Any], name: str = "model") -> ModelShape:
    """Build the shape from a config.json mapping (multimodal configs: their text_config)."""
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type"))}
    if cfg.get("num_local_experts") or cfg.get("num_experts"):
        raise ValueError(f"{name}: mixture-of-experts models are not covered by `tunesmith plan` yet")
    model_type = str(cfg.get("model_type", "llama"))
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
            qkv_bias=bool(family.get("qkv_bias") or cfg.get("attention_bias", False)),
            o_bias=bool(cfg.get("attention_bias", False)) and model_type != "qwen2",
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            norms_per_layer=family["norms"], qk_norm=family["qk_norm"], fused=family["fused"],
            assumed_layout=model_type not in FAMILIES,
        )
    except KeyError as err:
        raise ValueError(f"{name}: config.json has no {err.args[0]}; is it a decoder language model?") from None
    return shape


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


def load_shape(model: str) -> ModelShape:
    cfg, source = read_config(model)
    try:
        return replace(shape_from_config(cfg, name=model), source=source)
    except ValueError as err:
        raise ModelNotFoundError(f"{source}: {err}") from None
