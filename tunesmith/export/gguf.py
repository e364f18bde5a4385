"""Write a model as one GGUF file (llama.cpp, Ollama, LM Studio) with the `gguf` package: metadata, tokenizer, chat
template and tensors, f32/f16/bf16 or quantized to q8_0/q5_1/q5_0/q4_1/q4_0 in numpy (gguf.quants).

    tunesmith export --adapters runs/prd/final --to gguf --gguf-type q8_0

What llama.cpp needs, per architecture (its convert_hf_to_gguf.py is the reference; this is our own code):
- llama (Llama, Mistral, SmolLM2): q_proj/k_proj rows reordered from HF's rotate-half RoPE layout to llama.cpp's
  interleaved one (per head, the two halves of each head's dimensions interleaved); Llama 3.1+ `llama3` RoPE scaling as
  a rope_freqs tensor of per-frequency factors.
- qwen2, qwen3: the HF layout as it is (llama.cpp's qwen kernels use rotate-half); Qwen3's q_norm/k_norm.
- gemma2, gemma3: RMSNorm weights + 1 (HF's Gemma norms multiply by 1 + w, llama.cpp's by w); softcapping and the
  sliding window in the metadata.
- phi3 (Phi-3, Phi-3.5, Phi-4): fused qkv and gate_up as they are; LongRoPE factors as tensors.
The tokenizer: byte-level BPE (Llama 3, Qwen, SmolLM2, Phi-4, Mistral-Nemo) as llama.cpp's "gpt2" model with the
pre-tokenizer named from tokenizer.json's own split rule (an unknown rule is refused: llama.cpp would split text
differently from training); sentencepiece-style BPE with byte fallback (Gemma, Phi-3, Mistral 7B) as llama.cpp's
"llama" model through gguf.vocab.LlamaHfVocab. add_bos_token is false: the chat template writes BOS where the model
wants it, which is how tunesmith trained (Template renders text, then tokenizes without special tokens).

Types: 1-D tensors (norms, biases) stay f32; with a 4/5-bit type the token embeddings and output stay q8_0 (llama.cpp's
own quantizer keeps the output at 6 bits; the gguf package writes no k-quants: Q2_K..Q6_K and IQ types raise
NotImplementedError in gguf 0.19, so they need llama.cpp's llama-quantize); a row whose length is not a multiple of
the block (32) falls back to f16, as llama.cpp's converter does.

While writing, each tensor is dequantized again and put back into the model (inverse layout), so the model in memory
afterwards holds exactly the weights the file holds: the export report measures those.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0")


@dataclass(frozen=True)
class Arch:
    gguf: str  # llama.cpp's architecture name
    permute_qk: bool = False  # llama: HF rotate-half -> llama.cpp interleaved rows in q_proj/k_proj
    norm_shift: float = 0.0  # gemma: llama.cpp stores 1 + w for RMSNorm weights


# config.model_type -> how llama.cpp wants it
ARCHS = {
    "llama": Arch("llama", permute_qk=True),
    "mistral": Arch("llama", permute_qk=True),
    "qwen2": Arch("qwen2"),
    "qwen3": Arch("qwen3"),
    "gemma2": Arch("gemma2", norm_shift=1.0),
    "gemma3_text": Arch("gemma3", norm_shift=1.0),
    "phi3": Arch("phi3"),
}
FAMILIES = "Llama 2/3, SmolLM2, Mistral (llama, mistral), Qwen2/2.5 (qwen2), Qwen3 (qwen3), Gemma 2 (gemma2), Gemma 3 " \
           "text (gemma3_text), Phi-3/3.5/4 (phi3)"
# tokenizer.json split rules llama.cpp knows by name (tokenizer.ggml.pre); the regexes as transformers reads them back
PREFERRED_PRE = ("llama-bpe", "qwen2", "tekken", "gpt-4o", "qwen35")


def supported(model_type: str) -> Arch:
    if model_type not in ARCHS:
        raise ConfigError(f"to: gguf: model type {model_type!r} is not one tunesmith writes as GGUF; supported: "
                          f"{FAMILIES}")
    return ARCHS[model_type]


# -----------------------------------------------------------------------------
# Tensors: names, layout, types


def permute(w: Any, n_head: int) -> Any:
    """HF rotate-half rows -> llama.cpp's interleaved rows, head by head (works on weights and biases)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: Any, n_head: int) -> Any:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qtype_of(gguf_type: str) -> Any:
    import gguf

    return getattr(gguf.GGMLQuantizationType, gguf_type.upper())


def file_type(gguf_type: str) -> Any:
    import gguf

    if gguf_type == "f32":
        return gguf.LlamaFileType.ALL_F32  # (0: the one file type that is not MOSTLY_<type>)
    return getattr(gguf.LlamaFileType, f"MOSTLY_{gguf_type.upper()}")


def tensor_type(name: str, shape: tuple[int, ...], gguf_type: str) -> Any:
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) == 1 or name.endswith("_norm.weight") or name.startswith("rope_"):
        return T.F32
    target = qtype_of(gguf_type)
    if target in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1) and name in ("token_embd.weight", "output.weight"):
        target = T.Q8_0
    block = gguf.GGML_QUANT_SIZES[target][0]
    if shape[-1] % block:
        return T.F16
    return target


@dataclass
class Planned:
    gguf_name: str
    shape: tuple[int, ...]
    qtype: Any
    hf_name: str | None  # None: an extra tensor llama.cpp needs (rope factors)
    extra: Any = None


def plan_tensors(model: Any, arch: Arch, gguf_type: str) -> list[Planned]:
    import gguf

    config = model.config
    name_map = gguf.get_tensor_name_map(_arch_enum(arch.gguf), config.num_hidden_layers)
    planned = []
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reuses token_embd when the file has no output tensor
        base, _, suffix = hf_name.rpartition(".")
        mapped = name_map.get_name(base)
        if mapped is None:
            raise ConfigError(f"to: gguf: tensor {hf_name} of this {config.model_type} model has no GGUF name "
                              f"(gguf {gguf.__version__}); it may be a variant tunesmith does not convert")
        name = f"{mapped}.{suffix}"
        shape = tuple(tensor.shape)
        planned.append(Planned(name, shape, tensor_type(name, shape, gguf_type), hf_name))
    for name, values in extra_tensors(config, arch):
        planned.append(Planned(name, tuple(values.shape), gguf.GGMLQuantizationType.F32, None, values))
    return planned


def _arch_enum(name: str) -> Any:
    import gguf

    return next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == name)


def to_gguf_layout(hf_name: str, w: Any, config: Any, arch: Arch) -> Any:
    if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return permute(w, config.num_attention_heads)
    if arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return permute(w, config.num_key_value_heads or config.num_attention_heads)
    if arch.norm_shift and hf_name.endswith("norm.weight"):
        return w + arch.norm_shift
    return w


def from_gguf_layout(hf_name: str, w: Any, config: Any, arch: Arch) -> Any:
    if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return unpermute(w, config.num_attention_heads)
    if arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return unpermute(w, config.num_key_value_heads or config.num_attention_heads)
    if arch.norm_shift and hf_name.endswith("norm.weight"):
        return w - arch.norm_shift
    return w


# -----------------------------------------------------------------------------
# Metadata


def rope(config: Any) -> dict:
    """The rope parameters of the full-attention layers (transformers 5: config.rope_parameters)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "full_attention" in params:
        params = dict(params["full_attention"])
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return params


def head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def write_hparams(writer: Any, config: Any, arch: Arch) -> None:
    import gguf

    params = rope(config)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(params["rope_theta"]))
    writer.add_key_length(head_dim(config))
    writer.add_value_length(head_dim(config))
    kind = (params.get("rope_type") or params.get("type") or "default").lower()
    if arch.gguf == "llama":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim(config))
    if arch.gguf == "phi3":
        writer.add_rope_dimension_count(int(getattr(config, "partial_rotary_factor", 1.0) * config.hidden_size)
                                        // config.num_attention_heads)
        writer.add_rope_scaling_orig_ctx_len(getattr(config, "original_max_position_embeddings", None)
                                             or config.max_position_embeddings)
        writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)
        if kind in ("longrope", "su"):
            writer.add_rope_scaling_attn_factors(_longrope_attn_factor(config))
    elif kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(params["factor"]))
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(params["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(params.get("original_max_position_embeddings")
                                                 or config.max_position_embeddings))
    elif kind not in ("default", "llama3"):
        raise ConfigError(f"to: gguf: RoPE scaling {kind!r} of this model is not one tunesmith writes (default, "
                          "linear, yarn, llama3, Phi-3's longrope)")
    if arch.gguf == "gemma2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
        writer.add_sliding_window(config.sliding_window)
    if arch.gguf == "gemma3":
        if getattr(config, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
        writer.add_sliding_window(config.sliding_window)


def _longrope_attn_factor(config: Any) -> float:
    original = getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings
    scale = config.max_position_embeddings / original
    return math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1.0 else 1.0


def extra_tensors(config: Any, arch: Arch) -> Iterator[tuple[str, Any]]:
    """Tensors llama.cpp wants that HF computes: Llama 3.1's per-frequency RoPE factors, Phi-3's LongRoPE factors."""
    import numpy as np

    params = rope(config)
    kind = (params.get("rope_type") or params.get("type") or "default").lower()
    if arch.gguf == "llama" and kind == "llama3":
        dim, base = head_dim(config), float(params["rope_theta"])
        freqs = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
        factor, low, high = params.get("factor", 8.0), params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
        old = params.get("original_max_position_embeddings", 8192)
        wavelen = 2 * math.pi / freqs
        smooth = (old / wavelen - low) / (high - low)
        factors = np.where(wavelen < old / high, 1.0,
                           np.where(wavelen > old / low, factor, 1 / ((1 - smooth) / factor + smooth)))
        yield "rope_freqs.weight", factors.astype(np.float32)
    if arch.gguf == "phi3" and kind in ("longrope", "su"):
        yield "rope_factors_long.weight", np.asarray(params["long_factor"], dtype=np.float32)
        yield "rope_factors_short.weight", np.asarray(params["short_factor"], dtype=np.float32)


# -----------------------------------------------------------------------------
# Tokenizer


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name (tokenizer.ggml.pre) for the split rule tokenizer.json applies before BPE."""
    pre = spec.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in items]
    if kinds == ["ByteLevel"] and items[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and items[0].get("individual_digits") and items[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not items[1].get("use_regex", True):
        regex = (items[0].get("pattern") or {}).get("Regex")
        known = _known_splits()
        if regex in known:
            return known[regex]
    raise ConfigError("to: gguf: the tokenizer's pre-tokenizer (" + json.dumps(pre)[:300] + ") is not one llama.cpp "
                      "names; the GGUF would split text differently from training, so it is not written")


def _known_splits() -> dict[str, str]:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_PRE_TOKENIZER_SPLITS,
    )

    out: dict[str, str] = {}
    for name in (*PREFERRED_PRE, *GGUF_PRE_TOKENIZER_SPLITS):
        if name in GGUF_PRE_TOKENIZER_SPLITS:
            out.setdefault(GGUF_PRE_TOKENIZER_SPLITS[name], name)
    return out


def write_vocab(writer: Any, template: Any, vocab_size: int) -> dict:
    """Tokens, merges or scores, special token ids and the chat template. Returns what was written (for the report)."""
    import gguf
    from gguf.vocab import LlamaHfVocab

    tok = template.tokenizer
    if len(tok) > vocab_size:
        raise ConfigError(f"to: gguf: the tokenizer has {len(tok)} tokens, more than the model's {vocab_size} embeddings")
    with tempfile.TemporaryDirectory() as folder:
        tok.save_pretrained(folder)
        spec = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
        model = spec["model"]
        if model["type"] != "BPE":
            raise ConfigError(f"to: gguf: {model['type']} tokenizers are not written (BPE only: byte-level or "
                              "sentencepiece-style with byte fallback)")
        if model.get("byte_fallback"):
            kind, pre = "llama", "default"
            texts, scores, types = [], [], []
            for text, score, toktype in LlamaHfVocab(Path(folder)).all_tokens():
                texts.append(text)
                scores.append(score)
                types.append(toktype)
            for i in range(len(texts), vocab_size):
                texts.append(f"[PAD{i}]".encode())
                scores.append(-1000.0)
                types.append(gguf.TokenType.UNUSED)
            writer.add_token_scores(scores)
        else:
            kind, pre = "gpt2", pre_tokenizer_name(spec)
            texts, types = byte_level_tokens(tok, vocab_size)
        writer.add_tokenizer_model(kind)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(texts)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(folder, load_merges=kind == "gpt2", n_vocab=vocab_size)
    special.chat_template = None  # written below: the one tunesmith trained and serves with
    special.add_special_token = {"bos": False, "eos": False}
    special.add_to_gguf(writer, quiet=True)
    writer.add_chat_template(tok.chat_template)
    eot = [i for i in template.stop_token_ids if i != tok.eos_token_id]
    if eot:
        writer.add_eot_token_id(eot[0])
    return {"tokenizer": kind, "pre": pre, "tokens": len(texts), "eot_token_id": eot[0] if eot else None}


def byte_level_tokens(tok: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id up to vocab_size: special added tokens as CONTROL, other added ones USER_DEFINED, holes [PADi]."""
    import gguf

    reverse = {i: t for t, i in tok.get_vocab().items()}
    added = tok.get_added_vocab()
    decoder = tok.added_tokens_decoder
    texts, types = [], []
    for i in range(vocab_size):
        if i not in reverse:
            texts.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif reverse[i] in added:
            texts.append(reverse[i])
            types.append(gguf.TokenType.CONTROL if decoder[i].special else gguf.TokenType.USER_DEFINED)
        else:
            texts.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)
    return texts, types


# -----------------------------------------------------------------------------
# The file


def write(model: Any, template: Any, path: Path, gguf_type: str, name: str, parent_sha256: str | None) -> dict:
    """Write `model` to `path`; afterwards `model` holds the weights as the file stores them. Returns a summary."""
    import gguf
    import numpy as np
    import torch

    config = model.config
    arch = supported(config.model_type)
    tensors = plan_tensors(model, arch, gguf_type)
    writer = gguf.GGUFWriter(path, arch.gguf)
    writer.add_type("model")
    writer.add_name(name)
    writer.add_description("exported by tunesmith (tunesmith export --to gguf); lineage.json beside it")
    if parent_sha256:
        writer.add_string("tunesmith.parent_lineage_sha256", parent_sha256)
    write_hparams(writer, config, arch)
    writer.add_file_type(file_type(gguf_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab = write_vocab(writer, template, config.vocab_size)
    for t in tensors:
        block, size = gguf.GGML_QUANT_SIZES[t.qtype]
        writer.add_tensor_info(t.gguf_name, t.shape, np.float32, math.prod(t.shape) // block * size, raw_dtype=t.qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    params = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    counts: dict[str, int] = {}
    with torch.no_grad():
        for t in tensors:
            if t.hf_name is None:
                writer.write_tensor_data(t.extra)
                continue
            target = params[t.hf_name]
            data = to_gguf_layout(t.hf_name, target.detach().float().cpu(), config, arch).numpy()
            packed = gguf.quants.quantize(data, t.qtype)
            writer.write_tensor_data(packed)
            # back into the model, as the file holds it
            stored = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(packed, t.qtype)).reshape(t.shape))
            target.copy_(from_gguf_layout(t.hf_name, stored.float(), config, arch).to(target.dtype))
            counts[t.qtype.name] = counts.get(t.qtype.name, 0) + 1
    writer.close()
    return {"architecture": arch.gguf, "gguf_type": gguf_type, "tensor_types": counts, **vocab}
