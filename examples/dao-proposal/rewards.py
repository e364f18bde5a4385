"""Rewards for the DAO proposal drafter's GRPO stage: does the draft cite on-chain data, and is its tone neutral?

    tunesmith rlhf -c examples/dao-proposal/grpo.yaml       # grpo.yaml names this file under `plugin:`

Each registered reward takes the completions (assistant texts) and the prompt rows' extra columns and returns one
float in [0, 1] per completion. The scoring lives in plain per-text functions (`citation_score`, `tone_score`),
so it can be tested and reused without the registry.
"""

from __future__ import annotations

import re
from urllib.parse import urlparse

from tunesmith import register_reward  # returns the function unchanged, so the rewards stay callable directly

# -----------------------------------------------------------------------------
# data_citation_score

# Block explorers whose /tx/<hash> and /address/<address> paths follow the Etherscan layout. A link to any other
# host with an explorer-style path counts as malformed: the reader cannot check it where the draft says.
EXPLORERS = {
    "etherscan.io", "sepolia.etherscan.io", "holesky.etherscan.io", "arbiscan.io", "nova.arbiscan.io",
    "optimistic.etherscan.io", "basescan.org", "polygonscan.com", "zkevm.polygonscan.com", "gnosisscan.io",
    "bscscan.com", "snowtrace.io", "lineascan.build", "scrollscan.com", "blastscan.io", "era.zksync.network",
    "explorer.zksync.io", "ftmscan.com", "celoscan.io", "mantlescan.xyz",
}
URL = re.compile(r"https?://[^\s<>()\[\]`'\"]+", re.IGNORECASE)
EXPLORER_PATH = re.compile(r"^/(tx|address)/([^/?#]*)/?$", re.IGNORECASE)
HEX_TOKEN = re.compile(r"\b0x[0-9a-z]+\b", re.IGNORECASE)  # then judged: 64 hex = tx, 40 hex = address
HEX = re.compile(r"^[0-9a-f]+$", re.IGNORECASE)
DATA_CITED = re.compile(r"^\s*(#{1,6}\s*|\*\*)?data cited\b", re.IGNORECASE | re.MULTILINE)
NEXT_SECTION = re.compile(r"^\s*(#{1,6}\s+|\*\*)\w", re.MULTILINE)
SECTION_ONLY = 0.3  # a "Data cited" section with no well-formed citation in it
OUTSIDE_SECTION = 0.7  # well-formed citations, but none under "Data cited"
MIN_HASH_DIGITS = 16  # shorter 0x-tokens (selectors like 0xa9059cbb, "0x0") are not attempts at a citation


def _is_hex(s: str, n: int) -> bool:
    return len(s) == n and bool(HEX.match(s))


def _link_citation(url: str) -> bool | None:
    """True: a well-formed explorer link; False: explorer-shaped but malformed; None: not an explorer link."""
    parsed = urlparse(url.rstrip(".,;:"))
    host, m = (parsed.hostname or "").lower().removeprefix("www."), EXPLORER_PATH.match(parsed.path)
    if m is None:
        return False if host in EXPLORERS else None  # a forum or docs link is neither credit nor fault
    kind, ref = m.group(1).lower(), m.group(2)
    if host not in EXPLORERS or not ref.lower().startswith("0x"):
        return False
    return _is_hex(ref[2:], 64 if kind == "tx" else 40)


def citations(text: str) -> tuple[int, int]:
    """(well-formed, malformed) citations in `text`. Links are judged first and removed, so a hash inside a
    link is not counted again as a bare hash. A bare 40-hex address is neither: it names an account, not a
    source the reader can open."""
    good = bad = 0
    for url in URL.findall(text):
        verdict = _link_citation(url)
        good, bad = good + (verdict is True), bad + (verdict is False)
    for token in HEX_TOKEN.findall(URL.sub(" ", text)):
        digits = token[2:]
        if _is_hex(digits, 64):
            good += 1
        elif not _is_hex(digits, 40) and len(digits) >= MIN_HASH_DIGITS:
            bad += 1  # wrong length, or letters that are not hex
    return good, bad


def data_cited_section(text: str) -> str | None:
    """The body of the "Data cited" section (up to the next heading), or None when there is none."""
    m = DATA_CITED.search(text)
    if m is None:
        return None
    body = text[m.end():]
    body = body.split("\n", 1)[1] if "\n" in body else ""
    nxt = NEXT_SECTION.search(body)
    return body[: nxt.start()] if nxt else body


def citation_score(text: str) -> float:
    """1.0: every citation well-formed and at least one under "Data cited". Malformed citations scale the score
    by the share that is well-formed, and zero it when none is. 0.3 for a "Data cited" section that cites
    nothing checkable; 0.0 for no citation and no section."""
    good, bad = citations(text)
    section = data_cited_section(text)
    if good == 0:
        return SECTION_ONLY if section is not None and bad == 0 else 0.0
    in_section = section is not None and citations(section)[0] > 0
    return (good / (good + bad)) * (1.0 if in_section else OUTSIDE_SECTION)


@register_reward("data_citation_score")
def data_citation_score(completions: list[str], **columns) -> list[float]:
    return [citation_score(c) for c in completions]


# -----------------------------------------------------------------------------
# tone_neutrality
#
# An honest, small lexicon, not a classifier. What it cannot see: sarcasm, loaded framing in neutral words
# ("the so-called committee"), one-sided selection of facts, and any language but English. It can be wrong the
# other way: a security write-up that quotes "scam" or names a "Ponzi" scheme is penalised. Its job in GRPO is a
# floor (stop the policy drifting into hype or insults), next to the other rewards, never the only signal.

INSULTS = ["idiot", "idiots", "idiotic", "stupid", "moron", "morons", "clown", "clowns", "scammer", "scammers",
           "scam", "fraud", "frauds", "thief", "thieves", "crook", "crooks", "incompetent", "pathetic", "liar",
           "liars", "grifter", "grifters", "parasite", "parasites", "dumb", "ponzi", "rugged"]
LOADED = ["absurd", "ridiculous", "outrageous", "shameful", "disgraceful", "insane", "crazy", "greedy", "corrupt",
          "disaster", "disastrous", "catastrophe", "horrible", "terrible", "awful", "laughable", "no-brainer",
          "game-changer", "game changer", "guaranteed", "massive gains", "moon", "mooning", "100x", "lfg", "wagmi",
          "ngmi", "huge win", "obviously", "clearly", "undeniably", "unquestionably"]
# Absolutes that close a question instead of arguing it.
ABSOLUTES = ["everyone knows", "everybody knows", "anyone who", "only a fool", "nobody in their right mind",
             "no one can deny", "no sane", "it is obvious", "it's obvious", "without a doubt", "wake up",
             "must be stopped", "the only option", "there is no alternative"]
WEIGHTS = {"insult": 1.0, "absolute": 1.0, "shouting": 1.0, "exclamations": 1.0, "loaded": 0.5, "exclamation": 0.25}


def _phrases(words: list[str]) -> re.Pattern:
    return re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)


INSULT_RE, LOADED_RE, ABSOLUTE_RE = _phrases(INSULTS), _phrases(LOADED), _phrases(ABSOLUTES)
# Shouting: three capitalised words in a row ("THIS IS THEFT"), or one long one. Tickers and acronyms (USDC, TWAP,
# DAO) are short and come alone, so they pass; addresses and hashes are lower-case hex.
CAPS_RUN = re.compile(r"\b[A-Z]{2,}(?:[\s,]+[A-Z]{2,}\b){2,}")
CAPS_WORD = re.compile(r"\b[A-Z]{7,}\b")
EXCLAMATION_RUN = re.compile(r"[!?]*![!?]+|![!?]*!")  # "!!", "?!", "!?!"
EXCLAMATION = re.compile(r"!")


def tone_hits(text: str) -> dict[str, int]:
    runs = len(EXCLAMATION_RUN.findall(text))
    return {
        "insult": len(INSULT_RE.findall(text)),
        "loaded": len(LOADED_RE.findall(text)),
        "absolute": len(ABSOLUTE_RE.findall(text)),
        "shouting": len(CAPS_RUN.findall(text)) + len(CAPS_WORD.findall(CAPS_RUN.sub(" ", text))),
        "exclamations": runs,
        "exclamation": len(EXCLAMATION.findall(EXCLAMATION_RUN.sub(" ", text))),  # single "!" outside runs
    }


def tone_score(text: str) -> float:
    """1 / (1 + weighted hits): 1.0 for none, 0.5 for one insult, 0.33 for two. An empty answer scores 0, so
    saying nothing is not the neutral optimum."""
    if not text.strip():
        return 0.0
    weighted = sum(WEIGHTS[k] * n for k, n in tone_hits(text).items())
    return 1.0 / (1.0 + weighted)


@register_reward("tone_neutrality")
def tone_neutrality(completions: list[str], **columns) -> list[float]:
    return [tone_score(c) for c in completions]
