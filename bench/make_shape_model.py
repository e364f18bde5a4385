"""A random-weight model with a real model's shape, for benchmarks on machines with no hub access.

    python bench/make_shape_model.py --shape qwen2.5-0.5b-instruct --tokenizer TOKENIZER_DIR --out /tmp/qwen05

The shape (layers, widths, heads, vocabulary) comes from tunesmith.plan's built-in configs of registry models;
weights are random, so answers are noise but every token costs what the real model's would."""

from __future__ import annotations

import argparse

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from tunesmith.plan.model_shape import builtin_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", default="qwen2.5-0.5b-instruct")
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    values = dict(builtin_config(args.shape))
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    config.eos_token_id, config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype))
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters -> {args.out}")


if __name__ == "__main__":
    main()
