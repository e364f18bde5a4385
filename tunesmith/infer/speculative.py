"""Speculative decoding in the transformers engine: transformers' assisted generation on `generate()`.

    assistant = load_assistant("draft=runs/small/final", device, dtype)   # or "ngram:10"
    assistant.check(served)                    # a draft with another vocabulary is refused, naming both models
    model.generate(..., **assistant.options(served))   # assistant_model=... or prompt_lookup_num_tokens=N

--speculative ngram[:N] runs inside the continuous batch (infer/speculative_batch.py); this module then only parses
it. transformers' continuous batching has no draft model, and assisted generate() takes one sequence at a time. So
with --speculative draft=MODEL the engine answers text requests one at a time through generate()
(infer/generate_paths.py stream_assisted), under the same lock as the other generate() paths; concurrent streams
queue. On a GPU that path is slower than the continuous batch (eager
generate() against CUDA graphs: 6x at one stream for a 7B shape, docs/benchmarks.md); it pays only where generate()
is the baseline (CPU, one stream) and the draft is accepted often.
The served model checks each proposal, so greedy answers equal those without speculation (tests/infer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.config.speculative import Speculation, parse_speculative
from tunesmith.errors import ConfigError
from tunesmith.infer.served_models import Served
from tunesmith.models import load as models
from tunesmith.models.runs import read_run_output


@dataclass
class Assistant:
    spec: Speculation
    model: Any = None  # draft: the draft model, on the served models' device
    tokenizer: Any = None
    # served name -> [verification steps, tokens they produced]: each step of assisted generate() is one forward pass
    # of the served model yielding the proposals it accepted plus one token of its own, so accepted = tokens - steps
    counts: dict[str, list[int]] = field(default_factory=dict)

    def count_step(self, name: str, tokens: int) -> None:
        steps = self.counts.setdefault(name, [0, 0])
        steps[0] += 1
        steps[1] += tokens

    def options(self, served: Served) -> dict[str, Any]:
        """generate()'s arguments for speculation on `served` (ngram: the engine uses the batch instead)."""
        if self.spec.method == "ngram":
            return {"prompt_lookup_num_tokens": self.spec.tokens}
        options: dict[str, Any] = {"assistant_model": self.model}
        if _vocab_size(self.model) != _vocab_size(served.model):
            # The same tokens, embedding tables padded to other sizes (Qwen2.5 0.5B: 151936 rows, 7B: 152064):
            # transformers then asks for both tokenizers and maps the draft's proposals through text.
            options.update(tokenizer=served.template.tokenizer, assistant_tokenizer=self.tokenizer)
        return options

    def check(self, served: Served) -> None:
        """Refuse a draft whose tokenizer is not the served model's: its token ids would mean other words."""
        if self.spec.method != "draft" or served.processor is not None:
            return
        ours, theirs = served.template.tokenizer.get_vocab(), self.tokenizer.get_vocab()
        if ours == theirs:
            return
        differ = sorted(set(ours.items()) ^ set(theirs.items()), key=lambda item: item[1])[0]
        raise ConfigError(
            f"speculative: the draft model {self.spec.model} has a different vocabulary from {served.name} "
            f"({len(theirs)} tokens vs {len(ours)}; first difference: token {differ[0]!r}); assisted generation needs "
            "a draft with the served model's tokenizer (a smaller model of the same family), or use --speculative "
            "ngram")


def load_assistant(value: str, device: str, dtype: Any, served: list[Served]) -> Assistant:
    """The assistant for --speculative VALUE; a draft's tokenizer is checked against `served` before its weights."""
    try:
        spec = parse_speculative(value)
    except ValueError as err:  # the Python API's value; the CLI and YAML were checked by the config already
        raise ConfigError(f"speculative: {err} (got {value!r})") from None
    if spec.method == "ngram":
        return Assistant(spec)
    run = read_run_output(spec.model) if Path(spec.model).expanduser().is_dir() else None
    folder = run.folder if run is not None and run.is_adapter else models.resolve(spec.model)
    assistant = Assistant(spec, tokenizer=models.load_tokenizer(folder))
    for s in served:
        assistant.check(s)
    if run is not None and run.is_adapter:  # a LoRA run: merged into its base once, here
        base = models.load_model(models.resolve(run.base_model), dtype=dtype, device=device)
        assistant.model = models.attach_adapters(base, run.folder, trainable=False).merge_and_unload().eval()
    else:
        assistant.model = models.load_model(folder, dtype=dtype, device=device).eval()
    return assistant


def _vocab_size(model: Any) -> int:
    return model.config.get_text_config().vocab_size
