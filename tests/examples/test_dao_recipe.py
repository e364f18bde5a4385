"""The DAO proposal drafter recipe (examples/dao-proposal/): its data loads and has the five sections with a
well-formed citation, its generator is reproducible, its two rewards tell good drafts from bad ones, and its YAML
files load into their configs."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.config import SFTConfig, load
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.data.load import load_rows

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "dao-proposal"
SECTIONS = ("Title", "Background", "Data cited", "Budget", "Vote options")
TX = "0x" + "ab12" * 16  # 64 hex digits
ADDRESS = "0x" + "c0ffee00" * 5  # 40 hex digits


def _import(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rewards = _import("dao_recipe_rewards", EXAMPLE / "rewards.py")


def draft(citations: str) -> str:
    return (f"## Title\nFund an audit\n\n## Background\nThe bridge was last audited a year ago.\n\n"
            f"## Data cited\n{citations}\n\n## Budget\n- 40,000 USDC, 50% at kickoff\n\n"
            f"## Vote options\n- For\n- Against\n- Abstain")


# -----------------------------------------------------------------------------
# Data


def test_every_sft_row_loads_and_has_the_five_sections_and_a_citation():
    data = load_rows(["dao-proposals"], kind="sft")
    assert not data.problems and len(data.rows) >= 200
    heading = re.compile(r"^## (.+)$", re.MULTILINE)
    for row in data.rows:
        answer = row.messages[-1]["content"]
        assert tuple(heading.findall(answer)) == SECTIONS, f"line {row.line}"
        cited = rewards.data_cited_section(answer)
        assert rewards.citations(cited) >= (1, 0), f"line {row.line}: no well-formed citation under Data cited"


def test_prompt_files_are_user_turns_with_the_reward_columns():
    for name, least in (("prompts.jsonl", 40), ("eval_prompts.jsonl", 12)):
        data = load_rows([str(EXAMPLE / name)], kind="prompts")
        assert not data.problems and len(data.rows) >= least
        for row in data.rows:
            assert row.messages[-1]["role"] == "user"
            assert {"dao", "budget_cap", "explorer"} <= row.extra.keys()
    sft = {json.loads(line)["messages"][-2]["content"]
           for line in (ROOT / "tunesmith/data/shipped/dao_proposals.jsonl").read_text().splitlines()}
    held_out = {json.loads(line)["dao"] for line in (EXAMPLE / "eval_prompts.jsonl").read_text().splitlines()}
    assert not any(dao in text for dao in held_out for text in sft)  # eval DAOs never appear in training


def test_generator_is_deterministic(tmp_path):
    # Run a copy of the script in a scratch tree, so the shipped files are only read, never rewritten.
    script = tmp_path / "examples" / "dao-proposal" / "make_dataset.py"
    script.parent.mkdir(parents=True)
    (tmp_path / "tunesmith" / "data" / "shipped").mkdir(parents=True)
    script.write_text((EXAMPLE / "make_dataset.py").read_text())
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)
    for made, shipped in (("tunesmith/data/shipped/dao_proposals.jsonl", "tunesmith/data/shipped/dao_proposals.jsonl"),
                          ("examples/dao-proposal/prompts.jsonl", "examples/dao-proposal/prompts.jsonl"),
                          ("examples/dao-proposal/eval_prompts.jsonl", "examples/dao-proposal/eval_prompts.jsonl")):
        assert (tmp_path / made).read_bytes() == (ROOT / shipped).read_bytes(), made


# -----------------------------------------------------------------------------
# data_citation_score


@pytest.mark.parametrize("citation", [
    f"- Previous audit payment: {TX}",
    f"- Previous audit payment: https://etherscan.io/tx/{TX}",
    f"- Bridge contract: https://arbiscan.io/address/{ADDRESS}.",
])
def test_citation_score_is_one_for_a_well_formed_citation(citation):
    assert rewards.data_citation_score([draft(citation)]) == [1.0]


@pytest.mark.parametrize("bad", [
    f"- Previous audit payment: {TX[:-1]}",  # 63 hex digits
    f"- Previous audit payment: {TX[:-1]}g",  # not hex
    f"- Previous audit payment: https://etherscan.io/tx/{TX[:-1]}",
    f"- Previous audit payment: https://chainviewer.example/tx/{TX}",  # unknown host
    f"- Bridge contract: https://arbiscan.io/address/{ADDRESS}ff",  # 42 digits after /address/
])
def test_citation_score_is_lower_for_a_malformed_one(bad):
    good = f"- Treasury: https://etherscan.io/address/{ADDRESS}"
    assert rewards.data_citation_score([draft(bad)]) == [0.0]  # only malformed: no credit, not even the section's
    mixed = rewards.citation_score(draft(good + "\n" + bad))
    assert mixed == 0.5  # one of two citations well-formed


def test_citation_score_partial_for_a_section_without_citations_and_zero_with_none():
    section_only = draft("- The treasury report from last quarter")
    nothing = "We propose to fund an audit of the bridge for 40,000 USDC. Vote For or Against."
    assert rewards.data_citation_score([section_only, nothing]) == [rewards.SECTION_ONLY, 0.0]
    assert 0 < rewards.SECTION_ONLY < 1
    # a well-formed hash outside any Data cited section is worth less than one inside it
    assert rewards.citation_score(f"See {TX}.") == rewards.OUTSIDE_SECTION < 1.0


def test_citation_score_ignores_short_hex_and_plain_links():
    text = draft(f"- Transfer selector 0xa9059cbb, forum thread https://forum.example.org/t/123, tx {TX}")
    assert rewards.citation_score(text) == 1.0


# -----------------------------------------------------------------------------
# tone_neutrality

NEUTRAL = ("The bridge contracts were last audited fourteen months ago. Since then 23 pull requests have changed "
           "them. This proposal funds a four-week review by an external firm, paid in three milestones.")
INFLAMMATORY = ("Everyone knows the last audit was a SCAM BY THE SAME CLOWNS!!! Only a fool would vote against "
                "this, it is obviously a no-brainer.")


def test_tone_scores_a_neutral_paragraph_above_an_inflammatory_one():
    neutral, inflammatory = rewards.tone_neutrality([NEUTRAL, INFLAMMATORY])
    assert neutral == 1.0
    assert 0.0 < inflammatory < 0.2
    assert all(0.0 <= s <= 1.0 for s in (neutral, inflammatory))


@pytest.mark.parametrize("text", [
    "The committee is incompetent.",  # insult
    "This plan is ABSOLUTELY necessary.",  # one long word in capitals
    "Vote for this now!!",  # exclamation run
    "Everybody knows the fee is too high.",  # absolute
])
def test_each_kind_of_loaded_wording_costs(text):
    assert rewards.tone_score(text) < 1.0


def test_tickers_acronyms_and_hashes_are_not_shouting():
    text = f"The DAO pays 40,000 USDC via a TWAP to the ETH/USDC pool, see {TX}."
    assert rewards.tone_score(text) == 1.0
    assert rewards.tone_score("   ") == 0.0  # an empty answer is not the neutral optimum


def test_rewards_are_registered_by_name():
    from tunesmith.train.rewards.registry import known_rewards

    assert {"data_citation_score", "tone_neutrality"} <= set(known_rewards())


# -----------------------------------------------------------------------------
# Configs


def test_yaml_files_load_into_their_configs(monkeypatch):
    monkeypatch.chdir(ROOT)
    sft = load(SFTConfig, ["-c", str(EXAMPLE / "sft.yaml")])
    assert sft.dataset == ["dao-proposals"] and sft.model == "smollm2-135m-instruct" and sft.tuner == "lora"
    grpo = load(RLHFConfig, ["-c", str(EXAMPLE / "grpo.yaml")])
    assert grpo.method == "grpo" and grpo.adapters == "runs/dao-sft/final"
    assert grpo.rewards.funcs == ["data_citation_score", "tone_neutrality", "format"]
    assert grpo.rewards.plugin == ["examples/dao-proposal/rewards.py"]
    # the format reward's pattern accepts every SFT answer, so a drafter that learned the data starts at 1.0
    pattern = re.compile(grpo.rewards.format_pattern, re.DOTALL)
    rows = load_rows(sft.dataset, kind="sft").rows
    assert all(pattern.fullmatch(r.messages[-1]["content"].strip()) for r in rows)
    assert not pattern.fullmatch(draft(f"- {TX}").replace("## Budget", "## Costs"))
