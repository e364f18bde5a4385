"""Named datasets: the ones shipped inside the package, and well-known hub datasets (downloaded when online)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).parent / "shipped"


@dataclass(frozen=True)
class NamedDataset:
    name: str
    description: str
    path: Path | None = None  # shipped file
    hub_id: str | None = None  # or a hub dataset
    split: str = "train"


REGISTRY = {
    d.name: d
    for d in [
        NamedDataset("prd-assistant", "Feature descriptions -> product-requirement sections (EN + ZH).",
                     path=SHIPPED / "prd_assistant.jsonl"),
        NamedDataset("dao-proposals", "Requests -> DAO governance proposals citing on-chain sources (synthetic, EN).",
                     path=SHIPPED / "dao_proposals.jsonl"),
        NamedDataset("self-cognition", "Who-are-you answers; {{name}} and {{author}} come from model_name/model_author.",
                     path=SHIPPED / "self_cognition.jsonl"),
        NamedDataset("alpaca-en", "Stanford Alpaca, 52k English instructions (hub).", hub_id="tatsu-lab/alpaca"),
        NamedDataset("alpaca-gpt4-zh", "Alpaca GPT-4 answers in Chinese (hub).", hub_id="llamafactory/alpaca_gpt4_zh"),
        NamedDataset("ultrachat-200k", "UltraChat 200k multi-turn chats (hub).", hub_id="HuggingFaceH4/ultrachat_200k",
                     split="train_sft"),
    ]
}
