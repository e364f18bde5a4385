"""Build PRD preference pairs from the shipped SFT data: the structured answer is `chosen`; `rejected` is the same
content made worse the way reviewers mark drafts down. Deterministic; writes dpo_pairs.jsonl beside this file.

    python examples/prd-assistant/make_dpo_pairs.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent.parent / "tunesmith" / "data" / "shipped" / "prd_assistant.jsonl"
ACCEPTANCE = ("## Acceptance Criteria", "## 验收标准")


def flatten(answer: str) -> str:
    """No headings, no lists: one block of prose."""
    lines = [re.sub(r"^(#+ |- |\d+\. )", "", line).strip() for line in answer.splitlines()]
    return " ".join(line for line in lines if line and not line.startswith("#"))


def drop_acceptance(answer: str) -> str:
    """The untestable draft: everything but the acceptance criteria."""
    for heading in ACCEPTANCE:
        if heading in answer:
            return answer.split(heading)[0].rstrip()
    return flatten(answer)


def vague(answer: str) -> str:
    """Headings kept, but every concrete number removed from the requirements."""
    return re.sub(r"\d+(\.\d+)?\s*(%|ms|s|seconds|minutes|hours|days|MB|GB|秒|分钟|小时|天)?", "some", answer)


WORSEN = [flatten, drop_acceptance, vague]


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines()]
    out = []
    for i, row in enumerate(rows):
        prompt, answer = row["messages"][0]["content"], row["messages"][1]["content"]
        rejected = WORSEN[i % len(WORSEN)](answer)
        if rejected.strip() and rejected != answer:
            out.append({"prompt": prompt, "chosen": answer, "rejected": rejected})
    target = HERE / "dpo_pairs.jsonl"
    target.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in out) + "\n", encoding="utf-8")
    print(f"wrote {len(out)} pairs to {target}")


if __name__ == "__main__":
    main()
