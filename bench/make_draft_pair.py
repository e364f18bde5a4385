"""A target and draft model pair with a known acceptance rate, for measuring speculative decoding on machines with no
real weights (random-weight shapes from bench/make_shape_model.py agree on almost nothing).

    python bench/make_draft_pair.py --model /tmp/m7 --layers 4 --target /tmp/t7 --draft /tmp/d7

The target is the model with the output projections (attention o_proj, MLP down_proj) of every layer from --layers on
set to zero: those layers add nothing to the residual stream, so the target's logits are exactly those of its first
--layers layers while it still pays the full model's compute. The draft is those first layers alone. Greedy drafts
are therefore always accepted: the measured speed-up is the upper bound of the mechanism at that draft/target cost
ratio, not a prediction for real models (where acceptance is typically 60-80 %)."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--layers", type=int, default=4, help="layers that do any work (the draft's depth)")
    parser.add_argument("--target", required=True)
    parser.add_argument("--draft", required=True)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16)
    layers = model.model.layers
    with torch.no_grad():
        for layer in layers[args.layers:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(args.target)
    model.model.layers = layers[:args.layers]
    model.config.num_hidden_layers = args.layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:args.layers]
    model.save_pretrained(args.draft)
    for folder in (args.target, args.draft):
        for name in TOKENIZER_FILES:
            if (Path(args.model) / name).exists():
                shutil.copy(Path(args.model) / name, Path(folder) / name)
    print(f"target {args.target} ({len(layers)} layers, {len(layers) - args.layers} silent), draft {args.draft} "
          f"({args.layers} layers)")


if __name__ == "__main__":
    main()
