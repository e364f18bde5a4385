"""A speculative-decoding benchmark target whose answers copy the prompt, at a real model's cost.

    python bench/make_echo_target.py --model /tmp/m7 --out /tmp/e7

Every layer's o_proj and down_proj are zeroed (the layers still compute everything, but add nothing to the residual)
and the head is set to the embeddings, so each next token depends on the last token alone: the answer falls into
repeating one token, and from its first repeats on prompt lookup (--speculative ngram) is accepted. The shape's random
weights (bench/make_shape_model.py) never repeat an n-gram, so this gives the mechanism's upper bound where they give
its cost. Tokenizer and config files are copied from --model.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a folder from bench/make_shape_model.py")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16, device_map=device)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(model.model.embed_tokens.weight)
    model.save_pretrained(args.out)
    for f in Path(args.model).iterdir():  # the tokenizer and generation config; weights and config are the new ones
        if f.is_file() and not (f.suffix == ".safetensors" or f.name.endswith(".index.json") or f.name == "config.json"):
            if not (Path(args.out) / f.name).exists():
                shutil.copy(f, Path(args.out) / f.name)
    print(f"echo target saved: {args.out}")


if __name__ == "__main__":
    main()
