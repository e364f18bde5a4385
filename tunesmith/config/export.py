"""`tunesmith export`: merge an adapter, quantize, write GGUF or an Ollama folder; every export writes
export_report.json (what it cost) and lineage.json (where it came from).

    tunesmith export --adapters runs/prd/final                       # merged HF folder, logits checked
    tunesmith export --adapters runs/prd/final --quant bnb4          # merged, then bitsandbytes 4-bit
    tunesmith export --adapters runs/prd/final --to ollama --gguf-type q8_0   # GGUF + Modelfile
    tunesmith export --inspect runs/prd/merged                       # print the lineage chain
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tunesmith.config.sections import Device, Section

Quant = Literal["none", "bnb4", "bnb8", "gptq", "awq", "fp8"]
GGUFType = Literal["f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0"]  # export/gguf.py GGUF_TYPES


class ExportConfig(Section):
    """Merge, quantize or convert a run's model, with a report and a lineage record. Run: tunesmith export --adapters
runs/NAME/final [--quant bnb4]"""

    adapters: str | None = Field(None, description="A run's final folder (runs/NAME/final): an adapter, or a full model.")
    model: str | None = Field(None, description=(
        "With --adapters: the base (default: the one the run recorded). Alone: the model to export (registry name, "
        "folder or hub id)."))
    output: str | None = Field(None, description=(
        "Folder to write (default: beside the run, named after the export: merged, merged-bnb4 ...; for --model, "
        "exports/NAME-...)."))
    overwrite: bool = Field(False, description=(
        "Replace an --output folder that holds other files than an earlier export (an earlier export or an empty "
        "folder is replaced without it). Never the source's folder, the current directory or a folder above them."))
    merge_lora: bool = Field(True, description=(
        "Fold the adapter into its base. false: write the adapter as it is (with tokenizer, template and lineage), "
        "to serve on its base; no quantization then."))
    quant: Quant = Field("none", description=(
        "none | bnb4 (bitsandbytes NF4, double quantization) | bnb8 (bitsandbytes LLM.int8): a folder transformers "
        "reloads with bitsandbytes | gptq, awq (--bits, --group-size, calibrated on --calib-dataset) | fp8 (FP8 "
        "weights per channel, activations per token, no calibration): llmcompressor in .venv-quant "
        "(scripts/quant-env.sh), compressed-tensors folders vLLM loads."))
    bits: Literal[4, 8] = Field(4, description="gptq/awq: bits per weight.")
    group_size: int = Field(128, ge=8, description=(
        "gptq/awq: weights sharing one scale; must divide every quantized layer's input width."))
    calib_dataset: list[str] = Field(default_factory=list, description=(
        "gptq/awq: calibration rows, any tunesmith dataset, rendered with the run's template (default: the run's own "
        "training data)."))
    calib_samples: int = Field(256, ge=1, description="gptq/awq: calibration rows used.")
    to: Literal["hf", "gguf", "ollama"] = Field("hf", description=(
        "hf: a transformers folder; gguf: one .gguf file for llama.cpp (Llama, Mistral, Qwen2/2.5/3, Gemma 2/3, "
        "Phi-3/3.5/4) with the chat template and special tokens; ollama: the .gguf and a Modelfile (TEMPLATE, stop "
        "tokens, num_ctx) for `ollama create NAME -f Modelfile`."))
    gguf_type: GGUFType = Field("f16", description=(
        "Tensor type of the GGUF: f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0 (k-quants need llama.cpp's "
        "llama-quantize: the gguf package does not write them). Norms stay f32; with 4/5-bit types the embeddings "
        "and output stay q8_0."))
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description=(
        "Dtype of the written weights (bnb: of the layers it does not quantize)."))
    verify: bool = Field(True, description="Check that merged logits equal adapter logits (fp32) before writing.")
    eval_dataset: list[str] = Field(default_factory=list, description=(
        "Held-out data for the report's perplexity (files or registry names; chats are rendered with the run's "
        "template, text rows as they are). Default: a short text shipped with tunesmith."))
    eval_tokens: int = Field(2048, ge=16, description="At most this many held-out tokens are scored (both models).")
    greedy_prompts: int = Field(4, ge=0, le=4, description=(
        "Shipped prompts both models answer greedily (16 tokens each) for the report's agreement; 0 skips it."))
    device: Device = Field("auto", description="Where the models run while exporting (bnb quantizes on it).")
    encoding: str = Field("utf-8", description="Text encoding of CSV/JSON/JSONL eval files.")
    push_to_hub: str | None = Field(None, description=(
        "Upload the exported folder to this Hugging Face hub repo (org/name; a private repo is created if missing). "
        "Needs a token and the network: checked before any work."))
    inspect: str | None = Field(None, description=(
        "Print the lineage chain of a folder (a run's final/ or an export) and check its files; nothing is written."))
    command: ClassVar[str] = "export"

    @model_validator(mode="after")
    def _check(self) -> ExportConfig:
        if self.inspect:
            return self
        if not self.adapters and not self.model:
            raise ValueError("adapters: give --adapters runs/NAME/final, or --model to export a model without one")
        if not self.merge_lora and (self.quant != "none" or self.to != "hf"):
            what = f"quant: {self.quant}" if self.quant != "none" else f"to: {self.to}"
            raise ValueError(f"{what} needs the adapter merged; drop --merge-lora false")
        if self.push_to_hub and self.push_to_hub.count("/") != 1:
            raise ValueError(f"push_to_hub: {self.push_to_hub!r} is not a hub repo id (org/name)")
        if self.quant != "none" and self.to != "hf":
            raise ValueError(f"quant: {self.quant} makes a transformers folder; a {self.to} export is quantized by "
                             "--gguf-type (e.g. q8_0, q4_0)")
        return self
