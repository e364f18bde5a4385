"""Compose the DAO proposal drafter's data from hand-written building blocks, with a fixed seed.

    python examples/dao-proposal/make_dataset.py

Writes three files, the same bytes on every run:
  tunesmith/data/shipped/dao_proposals.jsonl   SFT rows (registry name `dao-proposals`): request -> proposal
  examples/dao-proposal/prompts.jsonl           GRPO prompts (user turn only) + columns for the rewards
  examples/dao-proposal/eval_prompts.jsonl      held-out prompts, for DAOs that appear in neither file above

Every proposal has five level-2 sections in order: Title, Background, Data cited, Budget, Vote options. The DAOs,
people and firms are fictional; the chains and block explorers are real, so citations have the real shape
(explorer host + /tx/<64 hex> or /address/<40 hex>), but every hash and address is random: it points at nothing.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = HERE.parent.parent / "tunesmith" / "data" / "shipped" / "dao_proposals.jsonl"
SEED = 20240611
SECTIONS = ("Title", "Background", "Data cited", "Budget", "Vote options")
SYSTEM = ("You draft governance proposals for DAOs. Use the sections Title, Background, Data cited, Budget and "
          "Vote options, in that order. Cite every figure with a transaction hash or a block-explorer link, and "
          "keep the tone neutral and factual.")

# -----------------------------------------------------------------------------
# Building blocks: chains, DAOs, counterparties

# chain -> (explorer host, typical block height, in millions, as a range)
CHAINS = {
    "Ethereum": ("etherscan.io", (19.2, 21.4)),
    "Arbitrum": ("arbiscan.io", (180, 280)),
    "Optimism": ("optimistic.etherscan.io", (115, 130)),
    "Base": ("basescan.org", (12, 22)),
    "Polygon": ("polygonscan.com", (55, 64)),
    "Gnosis": ("gnosisscan.io", (32, 37)),
}

DEFI = {"lending", "exchange", "stablecoin", "staking", "insurance", "bridge", "derivatives"}


@dataclass
class Dao:
    name: str
    kind: str  # lending, exchange, grants, nft, l2, public-goods, climate, ...
    about: str  # "<name> <about>." opens the background
    chain: str
    token: str
    stable: str
    components: list[str]  # what an audit or a parameter change is about
    treasury: str = ""
    contracts: dict[str, str] = field(default_factory=dict)

    @property
    def explorer(self) -> str:
        return CHAINS[self.chain][0]


DAOS = [
    Dao("Larkspur Lend", "lending", "runs an over-collateralised lending market", "Ethereum", "LARK", "USDC",
        ["liquidation engine", "interest-rate model contracts", "price-oracle adapter"]),
    Dao("Brindle Swap", "exchange", "operates a concentrated-liquidity exchange", "Arbitrum", "BRND", "USDC",
        ["router contracts", "fee-switch module", "pool factory"]),
    Dao("Seedling Grants DAO", "grants", "funds early open-source work in its ecosystem", "Optimism", "SDLG", "USDC",
        ["grant-stream contracts", "milestone escrow", "allocation voting contract"]),
    Dao("Pixel Orchard", "nft", "is a community of 6,000 holders of generative Orchard NFTs", "Ethereum", "ORCH",
        "USDC", ["Orchard collection contract", "royalty splitter", "membership-claim contract"]),
    Dao("Meridian Collective", "l2", "governs the ecosystem fund of the Meridian rollup; its treasury and bridge "
        "contracts live on Ethereum", "Ethereum", "MRD", "USDC",
        ["canonical bridge contracts", "sequencer fee vault", "upgrade executor"]),
    Dao("Fernway Commons Fund", "public-goods", "funds open-source infrastructure through quarterly matching rounds",
        "Optimism", "FERN", "USDC", ["matching-pool contract", "round registry", "payout splitter"]),
    Dao("Mossgrove Climate DAO", "climate", "buys and retires carbon-removal credits and funds restoration projects",
        "Polygon", "MOSS", "USDC", ["credit-retirement contract", "project registry", "treasury vault"]),
    Dao("Lanternfall Guild", "gaming", "is a player guild that owns in-game assets and pays scholarship shares",
        "Arbitrum", "LNTN", "USDC", ["scholarship payout contract", "asset vault", "guild membership pass"]),
    Dao("Quillmark Writers DAO", "media", "is a collective of writers and editors that funds long-form reporting",
        "Base", "QUIL", "USDC", ["article-minting contract", "revenue splitter", "membership pass"]),
    Dao("Saltmarsh Dollar", "stablecoin", "issues a crypto-collateralised stablecoin, SMD", "Ethereum", "SMDG", "DAI",
        ["vault manager", "stability-fee module", "peg stability module"]),
    Dao("Ridgeline Staking", "staking", "runs a liquid-staking protocol with a curated operator set", "Ethereum",
        "RDG", "USDC", ["withdrawal queue", "operator registry", "rewards distributor"]),
    Dao("Open Atlas Research DAO", "science", "funds open datasets and replication studies in the life sciences",
        "Gnosis", "ATLS", "USDC", ["grant escrow", "dataset registry", "reviewer-payment contract"]),
    Dao("Harborlight Mutual", "insurance", "runs a discretionary cover mutual for smart-contract risk", "Ethereum",
        "HBL", "USDC", ["claims assessment contract", "capital pool", "cover pricing module"]),
    Dao("Kestrel Bridge", "bridge", "operates a cross-chain token bridge secured by a relayer set", "Arbitrum",
        "KSTL", "USDC", ["bridge contracts", "relayer set manager", "rate-limit module"]),
    Dao("Thistle Builders Guild", "developers", "is a developer DAO that maintains shared tooling and runs bounties",
        "Polygon", "THSL", "USDC", ["bounty escrow", "membership registry", "payment router"]),
    Dao("Wrenfield Land Trust DAO", "land", "holds and stewards community farmland through an on-chain trust",
        "Gnosis", "WREN", "DAI", ["title-registry contract", "stewardship payout contract", "treasury vault"]),
]

# Held out: these DAOs appear only in eval_prompts.jsonl.
EVAL_DAOS = [
    Dao("Copperleaf Perps", "derivatives", "runs a perpetual-futures exchange with an insurance fund", "Arbitrum",
        "CPRL", "USDC", ["margin engine", "funding-rate module", "insurance fund"]),
    Dao("Bluebell Arts Collective", "nft", "is a collective of 900 artists who co-own a shared NFT gallery", "Base",
        "BELL", "USDC", ["gallery contract", "royalty splitter", "curation voting contract"]),
    Dao("Northwind Water Commons", "climate", "funds watershed restoration and open water-quality data", "Optimism",
        "NWND", "USDC", ["project registry", "payout splitter", "sensor-data registry"]),
    Dao("Granite Validators DAO", "staking", "coordinates a set of independent Ethereum validators", "Ethereum",
        "GRNT", "USDC", ["operator registry", "fee-recipient splitter", "withdrawal manager"]),
]

AUDITORS = ["Halcyon Security", "Brightline Audits", "Northgate Review", "Cinder Labs", "Verdant Security",
            "Blackpine Assurance"]
PARTNERS = ["Gullwing Wallet", "Peregrine Oracle Network", "Sorrel Analytics", "Tamarack Payments",
            "Heron Custody", "Ashgrove Indexer"]
EVENTS = ["the Lisbon builder week", "an online hackathon in the autumn", "the regional meetup series",
          "a two-day research workshop", "the annual community summit"]
TOOLS = ["the open-source governance dashboard", "the community-run subgraph", "the treasury reporting scripts",
         "the multisig transaction simulator", "the delegate voting-history tracker"]
WORKING_GROUPS = ["Operations", "Treasury", "Community", "Risk", "Developer Relations"]
PROGRAMS = ["liquidity-mining program", "ambassador program", "legacy v1 vault", "referral rewards program",
            "quest campaign"]


# -----------------------------------------------------------------------------
# Citations: real explorer shapes, random hashes


class Cite:
    def __init__(self, dao: Dao, r: random.Random):
        self.dao, self.r = dao, r

    def hex(self, n: int) -> str:
        return "0x" + "".join(self.r.choice("0123456789abcdef") for _ in range(n))

    def tx(self) -> str:
        """A transaction, as an explorer link (mostly) or a bare hash with its chain."""
        h = self.hex(64)
        if self.r.random() < 0.3:
            return f"transaction {h} on {self.dao.chain}"
        return f"https://{self.dao.explorer}/tx/{h}"

    def address(self, addr: str) -> str:
        return f"https://{self.dao.explorer}/address/{addr}"

    def contract(self, name: str) -> str:
        if name not in self.dao.contracts:
            self.dao.contracts[name] = self.hex(40)
        return self.address(self.dao.contracts[name])

    def block(self) -> str:
        lo, hi = CHAINS[self.dao.chain][1]
        return f"{int(self.r.uniform(lo, hi) * 1_000_000):,}"


def item(r: random.Random, shows: str, citation: str) -> str:
    """One Data cited bullet: what it shows and where, in one of two orders."""
    if r.random() < 0.6:
        return f"- {shows}: {citation}"
    citation = "T" + citation[1:] if citation.startswith("transaction") else citation
    lead = shows[0].lower() if shows[1:2].islower() else shows[0]  # keep tickers (ATLS/USDC) as written
    return f"- {citation} ({lead + shows[1:]})"


def money(amount: int, unit: str) -> str:
    return f"{amount:,} {unit}"


def ask_money(amount: int, unit: str, r: random.Random) -> str:
    """How people write a cap in a request: 40,000 USDC, 40000 USDC or 40k USDC."""
    style = r.random()
    if style < 0.25 and amount % 1000 == 0:
        return f"{amount // 1000:,}k {unit}"
    return f"{amount} {unit}" if style < 0.4 else money(amount, unit)


def pick_amount(r: random.Random, lo: int, hi: int, step: int) -> int:
    return r.randrange(lo // step, hi // step + 1) * step


def for_against(r: random.Random, for_text: str, against_text: str) -> list[str]:
    abstain = r.choice(["Abstain", "Abstain: counts towards quorum without taking a side",
                        "Abstain: no preference; counts towards quorum"])
    return [f"For: {for_text}", f"Against: {against_text}", abstain]


@dataclass
class Draft:
    request: str  # what the user asks for, completed by a phrasing below
    title: str
    background: str
    data: list[str]
    budget: list[str]
    votes: list[str]
    cap: int  # the budget cap the user gives, in `unit`
    unit: str
    topic: str = ""


# -----------------------------------------------------------------------------
# Topics: each composes one proposal for a DAO


def audit(d: Dao, r: random.Random, c: Cite) -> Draft:
    comp, firm = r.choice(d.components), r.choice(AUDITORS)
    cap = pick_amount(r, 25_000, 120_000, 5_000)
    weeks, changes, months = r.randint(3, 6), r.randint(6, 40), r.randint(7, 20)
    return Draft(
        f"fund a security audit of our {comp}", f"Fund an external security audit of the {d.name} {comp}",
        f"{d.name} {d.about}. The {comp} was last reviewed externally {months} months ago; {changes} pull requests "
        f"have changed it since, including the upgrade now scheduled for the next release. This proposal asks the "
        f"DAO to fund a {weeks}-week audit by {firm} before that upgrade is executed. {firm} was chosen from "
        f"{r.randint(2, 4)} quotes on scope, availability and price.",
        [item(r, f"Current {comp} deployment", c.contract(comp)),
         item(r, f"Payment for the previous audit of this code", c.tx()),
         item(r, f"Treasury balance at block {c.block()}, which covers the request", c.address(d.treasury))],
        [f"- Amount: {money(cap, d.stable)} to {firm}, address {c.hex(40)}",
         f"- Milestones: 30% at kickoff, 40% on delivery of the draft report, 30% after the fix review",
         f"- The final report is published on the forum before the last payment is released"],
        for_against(r, f"fund the audit by {firm} as described", "do not fund the audit now"),
        cap, d.stable)


def diversify(d: Dao, r: random.Random, c: Cite) -> Draft:
    pct, days = r.choice([5, 8, 10, 12, 15, 20]), r.choice([14, 21, 30, 45])
    cap = pick_amount(r, 400_000, 3_000_000, 50_000)
    runway = r.randint(9, 20)
    return Draft(
        f"diversify part of the treasury out of {d.token} into {d.stable}",
        f"Diversify {pct}% of the {d.name} treasury from {d.token} into {d.stable}",
        f"{d.name} {d.about}. Most of the treasury is held in its own token, {d.token}, while expenses are paid in "
        f"{d.stable}. At current spending the {d.stable} balance covers about {runway} months. This proposal sells a "
        f"fixed share of {d.token} over {days} days through a time-weighted order so that the sale does not move "
        f"the market in a single block.",
        [item(r, "Treasury holdings by token", c.address(d.treasury)),
         item(r, f"Largest {d.stable} outflow of the last quarter (contributor payments)", c.tx()),
         item(r, f"{d.token}/{d.stable} pool used to estimate depth", c.contract(f"{d.token} pool"))],
        [f"- Sale size: {pct}% of treasury {d.token}, worth about {money(cap, d.stable)} at the time of writing; "
         f"the sale stops once {money(cap, d.stable)} has been received",
         f"- Execution: treasury multisig, a time-weighted order over {days} days, maximum slippage 1% per fill",
         f"- Proceeds stay in the treasury address above; no payments to third parties"],
        r.choice([
            [f"Option A: sell {pct}% over {days} days", f"Option B: sell {pct // 2 or 1}% over {days} days",
             "Option C: no sale", "Ranked-choice vote; Option C wins ties"],
            for_against(r, f"sell {pct}% of treasury {d.token} as described", "keep the treasury as it is")]),
        cap, d.stable)


def grants_round(d: Dao, r: random.Random, c: Cite) -> Draft:
    n, grantees = r.randint(2, 9), r.randint(8, 30)
    pool = pick_amount(r, 60_000, 400_000, 10_000)
    committee = r.choice([3, 5])
    stipend = r.choice([1_000, 1_500, 2_000])
    cap = pool + committee * stipend * 3
    return Draft(
        f"fund round {n} of our grants program",
        f"Fund round {n} of the {d.name} grants program",
        f"{d.name} {d.about}. Round {n - 1} funded {grantees} projects; the committee's report lists which "
        f"milestones were met and which grants were closed early. Round {n} keeps the same rules, with a "
        f"{committee}-person committee reviewing applications over three months.",
        [item(r, f"Round {n - 1} payouts from the grants multisig", c.tx()),
         item(r, "Grants multisig", c.contract("grants multisig")),
         item(r, f"Unspent round {n - 1} funds returned to the treasury", c.tx())],
        [f"- Grant pool: {money(pool, d.stable)}, sent to the grants multisig above",
         f"- Committee: {committee} reviewers at {money(stipend, d.stable)} per month for 3 months",
         f"- Grantees are paid 25% on signing and 75% on the milestone the committee accepts",
         f"- Total: {money(cap, d.stable)}; funds not granted after 6 months return to the treasury"],
        for_against(r, f"fund round {n} as described", f"do not fund round {n}"),
        cap, d.stable)


PROTOCOL_PARAMS = {
    "lending": [("the collateral factor of wstETH", "78%", "80%"), ("the reserve factor of USDC", "10%", "15%")],
    "exchange": [("the protocol fee on 0.05% pools", "0", "1/6 of LP fees"), ("the minimum tick spacing", "10", "1")],
    "stablecoin": [("the stability fee on ETH vaults", "3.5%", "4.25%"), ("the debt ceiling of the PSM", "50M", "80M")],
    "staking": [("the protocol fee on rewards", "10%", "8%"), ("the operator bond", "2 ETH", "4 ETH")],
    "insurance": [("the minimum capital ratio", "130%", "150%"), ("the claim assessment period", "7 days", "10 days")],
    "bridge": [("the daily withdrawal rate limit", "5M USD", "3M USD"), ("the relayer quorum", "5 of 9", "6 of 9")],
    "derivatives": [("the maximum leverage", "25x", "20x"), ("the insurance fund fee", "2%", "3%")],
}
GOV_PARAMS = [("the proposal quorum", "4% of supply", "3% of supply"), ("the voting period", "5 days", "7 days"),
              ("the proposal threshold", "100,000 tokens", "50,000 tokens"), ("the timelock delay", "2 days", "3 days")]


def parameter(d: Dao, r: random.Random, c: Cite) -> Draft:
    protocol = d.kind in DEFI and r.random() < 0.7
    what, old, new = r.choice(PROTOCOL_PARAMS[d.kind] if protocol else GOV_PARAMS)
    review, follow_up = pick_amount(r, 5_000, 20_000, 1_000), pick_amount(r, 3_000, 10_000, 1_000)
    where = r.choice(d.components) if protocol else "governor contract"
    reason = (f"Usage and risk figures have moved since {what} was last set, and the risk working group's review "
              f"recommends {new}." if protocol else
              f"Turnout has changed since {what} was last set; the last {r.randint(6, 15)} proposals show how "
              f"close each came to the current rule.")
    return Draft(
        f"change {what} from {old} to {new}", f"Change {what} from {old} to {new}",
        f"{d.name} {d.about}. {what[0].upper() + what[1:]} is currently {old}. {reason} This proposal changes one "
        f"value and nothing else; the change is executed through the timelock.",
        [item(r, f"Contract holding the parameter ({where})", c.contract(where)),
         item(r, f"Transaction that last set {what} to {old}", c.tx()),
         item(r, "Risk review payment and report reference", c.tx())],
        ["- The change itself costs nothing beyond gas: a single call through the existing timelock",
         f"- Already paid, not requested again: {money(review, d.stable)} for the independent review (cited above)",
         f"- Requested: up to {money(follow_up, d.stable)} for a follow-up review after 90 days, paid on delivery"],
        for_against(r, f"set {what} to {new}", f"keep {what} at {old}"),
        follow_up, d.stable)


def delegates(d: Dao, r: random.Random, c: Cite) -> Draft:
    n, monthly, months = r.choice([10, 12, 15, 20]), r.choice([1_000, 1_500, 2_000, 2_500]), r.choice([6, 12])
    cap = n * monthly * months
    part = r.choice([70, 75, 80])
    return Draft(
        "set up compensation for active delegates",
        f"Compensate the {n} most active {d.name} delegates for {months} months",
        f"{d.name} {d.about}. Voting power is concentrated in a small number of delegates, and the ones who read "
        f"and comment on proposals do so unpaid. This proposal pays a flat monthly amount to up to {n} delegates "
        f"who meet a participation rule, for {months} months, and then reports on turnout before any renewal.",
        [item(r, "Governor contract with per-delegate voting records", c.contract("governor")),
         item(r, f"Turnout on the last executed proposal ({r.randint(8, 31)}% of votable supply)", c.tx()),
         item(r, "Delegation registry listing delegate statements", c.contract("delegation registry"))],
        [f"- {money(monthly, d.stable)} per delegate per month, up to {n} delegates, for {months} months",
         f"- Eligibility: voted on at least {part}% of proposals in the month and posted a rationale for each vote",
         f"- Paid monthly from the treasury; total at most {money(cap, d.stable)}"],
        r.choice([for_against(r, "start the program as described", "do not start the program"),
                  [f"Option A: {money(monthly, d.stable)} per delegate per month",
                   f"Option B: {money(monthly // 2, d.stable)} per delegate per month",
                   "Option C: no compensation", "Ranked-choice vote; Option C wins ties"]]),
        cap, d.stable)


def partnership(d: Dao, r: random.Random, c: Cite) -> Draft:
    partner = r.choice(PARTNERS)
    cap = pick_amount(r, 50_000, 500_000, 10_000)
    months, cliff = r.choice([6, 12]), r.choice([1, 2, 3])
    goal = r.choice(["integrate our contracts into their product", "run a joint liquidity program",
                     "co-fund a shared security monitoring service", "run a six-month data-sharing pilot"])
    return Draft(
        f"partner with {partner} to {goal}", f"Partnership with {partner}: {goal}",
        f"{d.name} {d.about}. {partner} has proposed to {goal}. A pilot ran for {r.randint(4, 10)} weeks; its "
        f"figures are linked below. The payment is in {d.token}, vested, and tied to milestones that can be "
        f"checked on-chain.",
        [item(r, f"{partner} contract used in the pilot", c.address(c.hex(40))),
         item(r, "Pilot payment from the treasury", c.tx()),
         item(r, f"{d.token} held by the treasury at block {c.block()}", c.address(d.treasury))],
        [f"- {money(cap, d.token)} to {partner}, vested linearly over {months} months after a {cliff}-month cliff",
         f"- Milestones: integration live on mainnet (first release), usage report at month 3, final report at "
         f"month {months}",
         f"- Unvested tokens return to the treasury if a milestone is missed by more than 30 days"],
        for_against(r, f"approve the partnership with {partner}", "decline the partnership"),
        cap, d.token)


def sunset(d: Dao, r: random.Random, c: Cite) -> Draft:
    program = r.choice(PROGRAMS)
    left = pick_amount(r, 40_000, 600_000, 5_000)
    wind = pick_amount(r, 3_000, 15_000, 1_000)
    days = r.choice([30, 60, 90])
    return Draft(
        f"sunset the {program}", f"Sunset the {d.name} {program}",
        f"{d.name} {d.about}. The {program} started {r.randint(10, 30)} months ago. Activity attributed to it has "
        f"fallen for {r.randint(3, 6)} consecutive quarters, and the remaining budget would last about "
        f"{r.randint(5, 14)} more months at the current rate. This proposal ends it over {days} days and returns "
        f"what is left.",
        [item(r, f"{program[0].upper() + program[1:]} multisig", c.contract(program)),
         item(r, "Most recent distribution", c.tx()),
         item(r, "Distribution from a year earlier, for comparison", c.tx())],
        [f"- Final wind-down payment to the program's operators: {money(wind, d.stable)}",
         f"- Remaining funds, about {money(left, d.stable)}, return to the treasury within {days} days",
         "- No new commitments after the vote; existing commitments are honoured"],
        r.choice([for_against(r, f"sunset the {program} over {days} days", "keep the program running"),
                  [f"Option A: sunset over {days} days", "Option B: halve the budget and review in six months",
                   "Option C: keep the program as it is", "Ranked-choice vote; Option C wins ties"]]),
        wind, d.stable)


def bug_bounty(d: Dao, r: random.Random, c: Cite) -> Draft:
    pool, comp = pick_amount(r, 100_000, 1_000_000, 50_000), r.choice(d.components)
    top = min(pool // 2, pick_amount(r, 50_000, 500_000, 25_000))
    return Draft(
        "fund a standing bug bounty program", f"Fund a bug bounty of {money(pool, d.stable)} for {d.name}",
        f"{d.name} {d.about}. The protocol has no standing bounty; findings so far arrived by email without agreed "
        f"terms. This proposal funds a bounty pool held in an escrow multisig, with payouts set by severity.",
        [item(r, "Escrow multisig that would hold the pool", c.contract("bounty escrow")),
         item(r, "Previous ad-hoc payment for a reported issue", c.tx()),
         item(r, f"Value held in the {comp} at block {c.block()}", c.contract(comp))],
        [f"- Bounty pool: {money(pool, d.stable)} to the escrow multisig",
         f"- Payouts: critical up to {money(top, d.stable)}, high up to {money(top // 5, d.stable)}, "
         f"medium up to {money(top // 25, d.stable)}",
         "- Unused funds stay in escrow for 12 months, then return to the treasury unless renewed"],
        for_against(r, "fund the bounty as described", "do not fund the bounty"),
        pool, d.stable)


def working_group(d: Dao, r: random.Random, c: Cite) -> Draft:
    wg, people, months = r.choice(WORKING_GROUPS), r.randint(2, 5), r.choice([6, 12])
    monthly = pick_amount(r, 6_000, 12_000, 500)
    cap = people * monthly * months
    return Draft(
        f"renew the {wg} working group for {months} months",
        f"Renew the {d.name} {wg} working group for {months} months",
        f"{d.name} {d.about}. The {wg} working group's mandate ends this month. Its report lists the work "
        f"delivered in the last term and what was not delivered. This proposal renews it with {people} "
        f"contributors and a review at month 3.",
        [item(r, f"{wg} working group multisig", c.contract(f"{wg} multisig")),
         item(r, "Last stream of contributor payments", c.tx()),
         item(r, "Funds returned from the previous term", c.tx())],
        [f"- {people} contributors at {money(monthly, d.stable)} per month each, streamed per second",
         f"- Total: {money(cap, d.stable)} over {months} months",
         "- The stream can be cancelled by a governance vote at any time; unstreamed funds stay in the treasury"],
        for_against(r, f"renew the {wg} working group", "let the mandate end"),
        cap, d.stable)


def event(d: Dao, r: random.Random, c: Cite) -> Draft:
    ev = r.choice(EVENTS)
    prizes = pick_amount(r, 10_000, 80_000, 5_000)
    ops = pick_amount(r, 3_000, 20_000, 1_000)
    return Draft(
        f"sponsor {ev}", f"Sponsor {ev} for the {d.name} community",
        f"{d.name} {d.about}. The organisers of {ev} have offered a sponsor track on {d.name}'s contracts. The last "
        f"sponsored event drew {r.randint(4, 25)} team submissions; the cited payouts show who received prizes.",
        [item(r, "Prize payouts from the last sponsored event", c.tx()),
         item(r, "Events multisig", c.contract("events multisig")),
         item(r, "Refund of unused event funds", c.tx())],
        [f"- Prize pool: {money(prizes, d.stable)}, paid by the judges' multisig after results are posted",
         f"- Organiser fee and travel: {money(ops, d.stable)}, half before and half after the event",
         f"- Total: {money(prizes + ops, d.stable)}; unused prize money returns to the treasury"],
        for_against(r, f"sponsor {ev}", "do not sponsor it"),
        prizes + ops, d.stable)


def retro(d: Dao, r: random.Random, c: Cite) -> Draft:
    tool = r.choice(TOOLS)
    cash = pick_amount(r, 10_000, 60_000, 2_500)
    return Draft(
        f"retroactively fund {tool}", f"Retroactive funding for {tool}",
        f"{d.name} {d.about}. {tool[0].upper() + tool[1:]} has been maintained by volunteers for "
        f"{r.randint(8, 30)} months and is used in most governance discussions. This proposal pays for work already "
        f"done; it does not commit the DAO to future funding.",
        [item(r, "Maintainers' payment address", c.address(c.hex(40))),
         item(r, "Deployment of the current version", c.tx()),
         item(r, "Earlier one-off tip from the treasury", c.tx())],
        [f"- Total: {money(cash, d.stable)} to the maintainers' address cited above",
         f"- {money(cash * 6 // 10, d.stable)} on approval, {money(cash - cash * 6 // 10, d.stable)} after six "
         f"months if the tool is still maintained",
         "- No further funding is implied; a renewal would need its own proposal"],
        for_against(r, "pay the retroactive grant", "do not pay it"),
        cash, d.stable)


def carbon(d: Dao, r: random.Random, c: Cite) -> Draft:
    tonnes, price = r.choice([500, 1_000, 2_500, 4_000]), r.choice([40, 60, 90, 120])
    cap = tonnes * price
    return Draft(
        f"buy and retire {tonnes:,} tonnes of carbon-removal credits",
        f"Buy and retire {tonnes:,} tonnes of carbon-removal credits",
        f"{d.name} {d.about}. The DAO committed to retiring credits each year for its own and its members' "
        f"activity. This proposal buys credits from removal projects with third-party verification and retires "
        f"them on-chain, so the retirement can be checked.",
        [item(r, "Credit-retirement contract", c.contract("credit-retirement contract")),
         item(r, "Last year's retirement transaction", c.tx()),
         item(r, "Treasury balance available for the purchase", c.address(d.treasury))],
        [f"- {tonnes:,} tonnes at no more than {money(price, d.stable)} per tonne: at most {money(cap, d.stable)}",
         "- Bought in two tranches; the second only after the first retirement is posted",
         "- Any amount not spent within 90 days stays in the treasury"],
        for_against(r, "buy and retire the credits", "do not buy them this year"),
        cap, d.stable)


def commission(d: Dao, r: random.Random, c: Cite) -> Draft:
    n, each = r.randint(3, 10), pick_amount(r, 2_000, 10_000, 500)
    return Draft(
        f"commission {n} artists for a community series", f"Commission {n} artists for a {d.name} series",
        f"{d.name} {d.about}. Members asked for new work that is owned by the community. A curation vote produced "
        f"a shortlist; this proposal commissions {n} artists from it, with work delivered in two stages.",
        [item(r, "Curation vote result", c.tx()),
         item(r, "Collection contract the works will be minted to", c.contract("collection")),
         item(r, "Royalty income received by the treasury last quarter", c.address(d.treasury))],
        [f"- {money(each, d.stable)} per artist, {n} artists: {money(n * each, d.stable)}",
         "- 40% on the sketch, 60% on delivery of the final work",
         "- Royalties from the series go to the treasury"],
        for_against(r, f"commission the {n} artists", "do not commission the series"),
        n * each, d.stable)


def gas_subsidy(d: Dao, r: random.Random, c: Cite) -> Draft:
    cap = pick_amount(r, 20_000, 150_000, 5_000)
    per = r.choice([25, 50, 100])
    return Draft(
        "subsidise gas for new users and builders", f"Gas subsidy for new {d.name} users, capped at {money(cap, 'USDC')}",
        f"{d.name} {d.about}. New accounts pay for their first transactions before they have used the protocol. "
        f"This proposal funds a paymaster that covers gas for new accounts up to a per-account limit, for six "
        f"months.",
        [item(r, "Paymaster contract", c.contract("paymaster")),
         item(r, "Test-period top-up of the paymaster", c.tx()),
         item(r, "Share of new accounts that made a second transaction in the test", c.tx())],
        [f"- Paymaster funding: {money(cap, 'USDC')} over six months, topped up monthly",
         f"- Limit: {money(per, 'USDC')} of gas per new account",
         "- The paymaster's balance and spending are published monthly; unspent funds return to the treasury"],
        for_against(r, "fund the paymaster", "do not fund it"),
        cap, "USDC")


def signers(d: Dao, r: random.Random, c: Cite) -> Draft:
    n, k = r.choice([(5, 3), (7, 4), (9, 5)])
    out = r.randint(1, 3)
    pay = r.choice([250, 500, 750])
    return Draft(
        "rotate signers on the treasury multisig", f"Rotate {out} signer(s) on the {d.name} treasury multisig",
        f"{d.name} {d.about}. The treasury multisig is {k}-of-{n}. {out} signer(s) have stepped down or missed "
        f"signing requests for over two months. This proposal replaces them with the candidates elected in the "
        f"forum and keeps the threshold at {k}-of-{n}.",
        [item(r, "Treasury multisig", c.address(d.treasury)),
         item(r, "Last signer change on the multisig", c.tx()),
         item(r, "Most recent transaction that waited over a week for signatures", c.tx())],
        [f"- Signer stipend: {money(pay, d.stable)} per signer per month, {n} signers: "
         f"{money(pay * n * 12, d.stable)} a year",
         "- No other spending; the rotation is one multisig transaction"],
        for_against(r, "rotate the signers as listed", "keep the current signers"),
        pay * n * 12, d.stable)


def legal(d: Dao, r: random.Random, c: Cite) -> Draft:
    cap = pick_amount(r, 30_000, 150_000, 5_000)
    return Draft(
        "engage counsel to assess a legal wrapper for the DAO", f"Engage counsel to assess a legal wrapper for {d.name}",
        f"{d.name} {d.about}. The DAO signs contracts with service providers but has no legal entity, so "
        f"individual contributors sign on its behalf. This proposal funds an assessment of entity options; setting "
        f"one up would need a separate vote.",
        [item(r, "Payments to service providers signed by individual contributors", c.tx()),
         item(r, "Treasury multisig", c.address(d.treasury)),
         item(r, "Forum poll result, recorded on-chain", c.tx())],
        [f"- Up to {money(cap, d.stable)} to the selected firm",
         "- Milestones: options memo (40%), recommendation with costs (40%), answers to DAO questions (20%)",
         "- Paid from the treasury multisig on each milestone"],
        for_against(r, "fund the assessment", "do not fund it"),
        cap, d.stable)


# topic -> (compose, DAO kinds it fits; None = every DAO)
TOPICS = {
    "audit": (audit, None), "treasury diversification": (diversify, None), "grants round": (grants_round, None),
    "parameter change": (parameter, None), "delegate compensation": (delegates, None),
    "partnership": (partnership, None), "program sunset": (sunset, None),
    "bug bounty": (bug_bounty, DEFI | {"l2", "developers", "gaming"}), "working group renewal": (working_group, None),
    "event sponsorship": (event, None), "retroactive funding": (retro, None),
    "carbon retirement": (carbon, {"climate", "public-goods", "land", "nft", "science"}),
    "art commission": (commission, {"nft", "media", "public-goods", "gaming", "climate"}),
    "gas subsidy": (gas_subsidy, {"l2", "exchange", "bridge", "developers", "gaming"}),
    "signer rotation": (signers, None), "legal wrapper": (legal, None),
}

# -----------------------------------------------------------------------------
# Requests and rendering

SFT_ASKS = [
    "Draft a proposal for {dao} to {req}, budget {cap}.",
    "We're {dao}. Write a governance proposal to {req}. Budget cap: {cap}.",
    "Can you write up a {dao} proposal to {req}? We can spend up to {cap}.",
    "Prepare a Snapshot proposal for {dao} that would {req}; keep the budget at or below {cap}.",
    "{dao} needs a proposal to {req}. Please include on-chain sources. Max budget {cap}.",
    "Write the forum draft for {dao}: {req}. Budget no more than {cap}.",
]
# GRPO and eval prompts use phrasings the SFT rows never saw.
RL_ASKS = [
    "Put together a governance proposal for {dao} to {req}. Our ceiling is {cap}.",
    "I'm a delegate at {dao}. Help me draft a proposal to {req} with a budget of {cap} at most.",
    "{dao} governance: draft a proposal to {req}. Spend limit {cap}. Cite on-chain data.",
    "Please draft an on-chain proposal for {dao}: {req} (budget up to {cap}).",
]


def render(p: Draft) -> str:
    parts = [p.title, p.background, "\n".join(p.data), "\n".join(p.budget), "\n".join(f"- {v}" for v in p.votes)]
    return "\n\n".join(f"## {h}\n{body}" for h, body in zip(SECTIONS, parts))


def compose(dao: Dao, topic: str, r: random.Random) -> Draft:
    if not dao.treasury:
        dao.treasury = Cite(dao, r).hex(40)
    draft = TOPICS[topic][0](dao, r, Cite(dao, r))
    draft.topic = topic
    return draft


def fits(dao: Dao, topic: str) -> bool:
    kinds = TOPICS[topic][1]
    return kinds is None or dao.kind in kinds


def sft_rows(r: random.Random) -> list[dict]:
    rows = []
    for dao in DAOS:
        for topic in TOPICS:
            if not fits(dao, topic):
                continue
            p = compose(dao, topic, r)
            ask = r.choice(SFT_ASKS).format(dao=dao.name, req=p.request, cap=ask_money(p.cap, p.unit, r))
            messages = [{"role": "user", "content": ask}, {"role": "assistant", "content": render(p)}]
            if r.random() < 0.35:  # some rows carry the system prompt, so both forms are learned
                messages.insert(0, {"role": "system", "content": SYSTEM})
            rows.append({"messages": messages})
    r.shuffle(rows)
    return rows


def prompt_rows(daos: list[Dao], n: int, r: random.Random, seen: set[str]) -> list[dict]:
    """User-only rows; the extra columns reach GRPO reward functions as keyword arguments."""
    pairs = [(d, t) for d in daos for t in TOPICS if fits(d, t)]
    rows = []
    for dao, topic in r.sample(pairs, n):
        p = compose(dao, topic, r)
        ask = r.choice(RL_ASKS).format(dao=dao.name, req=p.request, cap=ask_money(p.cap, p.unit, r))
        assert ask not in seen, ask
        rows.append({"messages": [{"role": "user", "content": ask}], "dao": dao.name, "topic": topic,
                     "chain": dao.chain, "explorer": dao.explorer, "budget_cap": p.cap, "budget_unit": p.unit})
    return rows


def write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows):4d} rows to {path}")


def build(r: random.Random) -> tuple[list[dict], list[dict], list[dict]]:
    """The three files' rows; make_round2.py calls it too, so round 2's DAOs keep round 1's contract addresses."""
    sft = sft_rows(r)
    seen = {m["content"] for row in sft for m in row["messages"] if m["role"] == "user"}
    return sft, prompt_rows(DAOS, 40, r, seen), prompt_rows(EVAL_DAOS, 16, r, seen)


def main() -> None:
    sft, prompts, eval_prompts = build(random.Random(SEED))
    write(SHIPPED, sft)
    write(HERE / "prompts.jsonl", prompts)
    write(HERE / "eval_prompts.jsonl", eval_prompts)


if __name__ == "__main__":
    main()
