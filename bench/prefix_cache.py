"""Prefix caching in the transformers engine: time to first token for requests that share a long system prompt,
with transformers' block sharing on (the engine's default) and off, in process.

    python bench/prefix_cache.py --model smollm2-135m-instruct --system-tokens 2000 --requests 8

Per setting: one request warms the loop and leaves the system prompt's blocks in the cache, then --requests requests,
one after another, each with the same system prompt and its own question (only the question and the answer's first
token are computed when the prefix is reused). Reports TTFT p50 and mean, and the greedy answers' equality across
the two settings."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from tunesmith.infer import GenerationRequest, SamplingParams, load_engine
from tunesmith.models.load import resolve


def system_prompt(tokenizer, n_tokens: int) -> str:
    line = "Every answer follows the house style: short sentences, plain words, numbers with their units. "
    text = line
    while len(tokenizer(text)["input_ids"]) < n_tokens:
        text += line
    return text


async def ttft(engine, system: str, question: str, max_tokens: int) -> tuple[float, str]:
    request = GenerationRequest(messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
                                params=SamplingParams(max_tokens=max_tokens, temperature=0.0))
    start, first, text = time.perf_counter(), None, ""
    async for delta in engine.stream(request):
        if first is None and delta.text:
            first = time.perf_counter()
        text += delta.text
    return (first or time.perf_counter()) - start, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--system-tokens", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()
    answers = {}
    for sharing in (False, True):
        engine = load_engine("transformers", model=str(resolve(args.model)), device=args.device, dtype=args.dtype,
                             batching={"allow_block_sharing": sharing})
        try:
            system = system_prompt(engine.template_for(None).tokenizer, args.system_tokens)
            asyncio.run(ttft(engine, system, "Warm up.", args.max_tokens))
            runs = [asyncio.run(ttft(engine, system, f"Question {i}: what is {i} + {i}?", args.max_tokens))
                    for i in range(args.requests)]
        finally:
            engine.shutdown()
        times = [t for t, _ in runs]
        answers[sharing] = [a for _, a in runs]
        print(f"block sharing {'on ' if sharing else 'off'}: TTFT p50 {statistics.median(times) * 1000:.0f} ms, "
              f"mean {statistics.mean(times) * 1000:.0f} ms ({args.requests} requests, system prompt ~"
              f"{args.system_tokens} tokens, {args.model})", flush=True)
    print("greedy answers equal:", answers[False] == answers[True])


if __name__ == "__main__":
    main()
