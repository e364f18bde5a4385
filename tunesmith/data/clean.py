"""Cleaning before fine-tuning: duplicates, empty and garbage rows out, personal data masked.

    cleaner = Cleaner(dedupe=True, threshold=0.85, redact=True)
    reason = cleaner.removal(text, where)       # None, or why the row goes (empty, garbage, exact/near duplicate)
    text, found = cleaner.redact(text)          # "<EMAIL_ADDRESS>" for an e-mail, ...; found counts by entity

Near duplicates: MinHash over character 5-grams (datasketch's MinHash with 256 permutations and MinHashLSH; character
shingles work for Chinese as for English), a row whose estimated Jaccard similarity to a kept row is at least
`threshold` (0.8; text-dedup's default is 0.7) goes. Exact
duplicates compare the text with case and whitespace folded. Personal data: Microsoft Presidio's recognizers (e-mail,
credit card with its Luhn check, phone numbers through Google's libphonenumber for US, GB, CN, DE, FR and IN, IBAN,
US SSN, IP addresses) plus patterns added here for Chinese resident ID numbers (GB 11643-1999 checksum), Chinese
mobile numbers, and street addresses in English and Chinese; Presidio's anonymizer writes <ENTITY_TYPE> in their
place. No NER model is loaded (none can be downloaded here): names of people and places are not found, only the
formats above. Used by `tunesmith data clean` (data/clean_file.py) and by the training flags --dedupe and --redact-pii.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from tunesmith.errors import ConfigError

SHINGLE = 5
NUM_PERM = 256
MOJIBAKE = re.compile(r"[ÃÂ][\u0080-\u00bf]|â€[™œ\u009d“”˜¦]|ï¿½")  # UTF-8 read as Latin-1 / cp1252
# province-level names: a Chinese address starts with one (so the words before it, such as 地址, stay)
CN_PROVINCES = ("北京|天津|上海|重庆|河北|山西|辽宁|吉林|黑龙江|江苏|浙江|安徽|福建|江西|山东|河南|湖北|湖南|广东|海南|四川|贵州|"
                "云南|陕西|甘肃|青海|台湾|内蒙古|广西|西藏|宁夏|新疆|香港|澳门")
ID_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
ID_CHECK = "10X98765432"


def chinese_id_valid(number: str) -> bool:
    """GB 11643-1999: the 18th character is the ISO 7064 MOD 11-2 check of the first 17 digits."""
    number = number.upper()
    if len(number) != 18 or not number[:17].isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:17], ID_WEIGHTS))
    return ID_CHECK[total % 11] == number[17]


def normalised(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def garbage(text: str) -> str | None:
    """Why a text is unreadable, or None: replacement characters or mojibake from a wrong encoding, control
    characters, or too few letters, digits or CJK characters among its visible characters."""
    if "\ufffd" in text:
        return "holds U+FFFD replacement characters (decoded with the wrong encoding)"
    if len(MOJIBAKE.findall(text)) >= 2:
        return "mojibake (UTF-8 read as Latin-1, e.g. 'Ã©' for 'é')"
    visible = [c for c in text if not c.isspace()]
    if any(unicodedata.category(c) in ("Cc", "Co", "Cs") for c in visible):
        return "holds control or private-use characters"
    if len(visible) >= 8 and sum(c.isalnum() for c in visible) < 0.3 * len(visible):
        return "fewer than 30 % of its characters are letters or digits"
    return None


@dataclass
class Cleaner:
    dedupe: bool = True
    threshold: float = 0.8
    redact_pii: bool = True
    seen: dict[str, str] = field(default_factory=dict)  # exact key -> where it was first
    kept: dict[str, Any] = field(default_factory=dict)  # where -> MinHash
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lsh = None
        self._analyzer = None
        if self.dedupe:
            try:
                from datasketch import MinHashLSH
            except ImportError:
                raise ConfigError("dedupe: needs datasketch; pip install 'tunesmith[clean]'") from None
            # candidates from a looser band setting (LSH cannot band above ~0.95); the estimate then decides
            self._lsh = MinHashLSH(threshold=max(0.5, min(0.9, self.threshold - 0.1)), num_perm=NUM_PERM)

    # -------------------------------------------------------------------------
    # Rows that go

    def removal(self, text: str, where: str) -> str | None:
        """Why the row whose texts are `text` goes, or None; a kept row is remembered for later comparisons."""
        if not text.strip():
            return self._count("empty", "empty or whitespace only")
        bad = garbage(text)
        if bad:
            return self._count("garbage", bad)
        if not self.dedupe:
            return None
        key = hashlib.sha256(normalised(text).encode()).hexdigest()
        if key in self.seen:
            return self._count("exact_duplicate", f"exact duplicate of {self.seen[key]}")
        sketch = self._minhash(normalised(text))
        for other in self._lsh.query(sketch):
            similarity = sketch.jaccard(self.kept[other])
            if similarity >= self.threshold:
                return self._count("near_duplicate", f"near duplicate of {other} (similarity {similarity:.2f})")
        self.seen[key] = where
        self.kept[where] = sketch
        self._lsh.insert(where, sketch)
        return None

    def _minhash(self, text: str) -> Any:
        from datasketch import MinHash

        sketch = MinHash(num_perm=NUM_PERM, seed=1)
        grams = {text[i: i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}
        sketch.update_batch([g.encode("utf-8") for g in grams])
        return sketch

    def _count(self, name: str, reason: str) -> str:
        self.counts[name] = self.counts.get(name, 0) + 1
        return reason

    # -------------------------------------------------------------------------
    # Personal data

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """The text with each personal datum replaced by <ENTITY_TYPE>, and how many of each were found."""
        if not self.redact_pii or not text:
            return text, {}
        analyzer, anonymizer = self._engines()
        results = analyzer.analyze(text, language="en")
        if not results:
            return text, {}
        found: dict[str, int] = {}
        for r in results:
            found[r.entity_type] = found.get(r.entity_type, 0) + 1
        for name, n in found.items():
            self.counts[f"pii:{name}"] = self.counts.get(f"pii:{name}", 0) + n
        return anonymizer.anonymize(text, results).text, found

    def _engines(self) -> tuple[Any, Any]:
        if self._analyzer is None:
            self._analyzer = _presidio()
        return self._analyzer


def _presidio() -> tuple[Any, Any]:
    # tldextract (Presidio's e-mail check) fetches the public-suffix list on first use; use its bundled snapshot
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    try:
        from presidio_analyzer import (
            AnalyzerEngine,
            Pattern,
            PatternRecognizer,
            RecognizerRegistry,
        )
        from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            UsSsnRecognizer,
        )
        from presidio_anonymizer import AnonymizerEngine
    except ImportError:
        raise ConfigError("redact_pii: needs presidio; pip install 'tunesmith[clean]'") from None

    class ChineseIdRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return chinese_id_valid(pattern_text)

    digits_apart = (r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])")  # CJK text has no word boundary before a number
    ours = [
        ChineseIdRecognizer(supported_entity="CN_ID_NUMBER", patterns=[Pattern(
            "GB 11643", digits_apart[0] + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}"
            r"[\dXx]" + digits_apart[1], 0.5)]),
        PatternRecognizer(supported_entity="PHONE_NUMBER", name="ChineseMobileRecognizer", patterns=[Pattern(
            "CN mobile", r"(?<!\d)(?:\+?86[- ]?)?1[3-9]\d[- ]?\d{4}[- ]?\d{4}(?!\d)", 0.6)]),
        PatternRecognizer(supported_entity="ADDRESS", name="StreetAddressRecognizer", patterns=[Pattern(
            "street address", r"\b\d{1,5}(?:\s+[A-Z][a-z]+){1,3}\s+(?:Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|"
            r"Lane|Ln|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|Square|Sq)\b(?:,?\s+(?:Apt|Suite|Unit)\.?\s*\w+)?",
            0.6)]),
        PatternRecognizer(supported_entity="ADDRESS", name="ChineseAddressRecognizer", patterns=[Pattern(
            "CN address", f"(?:{CN_PROVINCES})(?:省|市|自治区|特别行政区)?(?:[\u4e00-\u9fa5]{{1,8}}?(?:市|区|县|镇))*"
            r"[\u4e00-\u9fa5\d]{1,12}?(?:路|街|道|巷|弄|胡同)\d{1,5}号(?:[\d\-]{1,6}(?:室|楼|单元))?", 0.6)]),
    ]
    registry = RecognizerRegistry(supported_languages=["en"])
    for recognizer in (EmailRecognizer(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(), UsSsnRecognizer(),
                       PhoneRecognizer(supported_regions=("US", "GB", "CN", "DE", "FR", "IN")), *ours):
        registry.add_recognizer(recognizer)
    # No NER model (none is installed or downloadable here): every recognizer above is a pattern or a validator.
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    return AnalyzerEngine(registry=registry, nlp_engine=nlp, supported_languages=["en"]), AnonymizerEngine()
