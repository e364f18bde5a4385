"""The volunteer matcher end to end against one `tunesmith deploy`: embed the roster, retrieve candidates for each of
an incident's needs, rerank them, then let the scheduling policy staff the team in the environment (env.py).

    tunesmith deploy --adapters policy=runs/volunteer-grpo/final \\
        --encoders embed=runs/volunteer-embed/final rerank=runs/volunteer-rerank/final --port 8000
    python examples/volunteer-matcher/pipeline.py --url http://127.0.0.1:8000/v1 --incident heldout-000

1. index    every profile of volunteers.jsonl through /v1/embeddings (the official openai SDK);
2. retrieve for each need of the incident (incidents.jsonl), the --top-k profiles by cosine similarity;
3. rerank   those with /v1/rerank (the cross-encoder reads need and profile together) and keep the best --keep;
4. assign   the shortlisted volunteers become an episode of env.py (as V1, V2, ...), and the policy answers one
            `assign V<n> to <role>` per turn through /v1/chat/completions, as in GRPO training, until the team is
            complete or --max-turns; the environment scores each assignment (skill, distance, time window).
Prints what each step chose (or, with --json, all of it as one JSON object). Needs only openai, httpx and numpy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import httpx
import numpy as np
from openai import OpenAI

HERE = Path(__file__).resolve().parent


def environment():
    """A fresh env.py VolunteerScheduling: the environment GRPO trained the policy in."""
    spec = importlib.util.spec_from_file_location("volunteer_env", HERE / "env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VolunteerScheduling()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Matcher:
    def __init__(self, url: str, api_key: str, embedder: str, reranker: str, policy: str):
        self.client = OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=600)
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {api_key}"}, timeout=600)
        self.embedder, self.reranker, self.policy = embedder, reranker, policy

    # -------------------------------------------------------------------------
    # 1-3: index, retrieve, rerank

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), 256):
            reply = self.client.embeddings.create(model=self.embedder, input=texts[start:start + 256])
            vectors += [d.embedding for d in reply.data]
        vectors = np.asarray(vectors, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)  # cosine = dot product

    def shortlist(self, need: str, roster: list[dict], index: np.ndarray, top_k: int, keep: int) -> dict:
        similarity = index @ self.embed([need])[0]
        retrieved = [int(i) for i in np.argsort(-similarity, kind="stable")[:top_k]]
        reply = self.http.post("/rerank", json={"model": self.reranker, "query": need, "top_n": keep,
                                                "documents": [roster[i]["profile"] for i in retrieved],
                                                "return_documents": False})
        reply.raise_for_status()
        kept = [(retrieved[r["index"]], r["relevance_score"]) for r in reply.json()["results"]]
        return {"need": need, "retrieved": [roster[i]["id"] for i in retrieved],
                "shortlist": [{"id": roster[i]["id"], "name": roster[i]["name"], "score": round(score, 4)}
                              for i, score in kept]}

    # -------------------------------------------------------------------------
    # 4: the policy staffs the team, one assignment per turn

    def assign(self, row: dict, max_turns: int, max_tokens: int) -> tuple[list[dict], dict[str, str]]:
        """The episode's turns (answer, reward, observation) and the team: role -> V<n>."""
        env = environment()
        messages = [{"role": "user", "content": env.reset(row)}]
        turns = []
        for _ in range(max_turns):
            reply = self.client.chat.completions.create(model=self.policy, messages=messages, max_tokens=max_tokens,
                                                        temperature=0)
            answer = reply.choices[0].message.content or ""
            observation, reward, done = env.step(answer)
            turns.append({"answer": answer, "reward": reward, "observation": observation})
            messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": observation}]
            if done:
                break
        return turns, env.assigned


def episode(incident: dict, needs: dict[str, dict], roster: dict[str, dict]) -> tuple[dict, dict[str, str]]:
    """The shortlisted volunteers as env.py's row: the request, and each volunteer once, numbered V1, V2, ..."""
    ids = list(dict.fromkeys(v["id"] for n in needs.values() for v in n["shortlist"]))
    numbers = {f"V{i}": vid for i, vid in enumerate(ids, start=1)}
    volunteers = [{"id": number, **{k: roster[vid][k] for k in ("name", "skills", "location", "free", "booked")}}
                  for number, vid in numbers.items()]
    request = {k: incident[k] for k in ("incident", "location", "window", "roles", "max_km")}
    return {"request": request, "volunteers": volunteers}, numbers


def run(args: argparse.Namespace) -> dict:
    roster = read_jsonl(args.data / "volunteers.jsonl")
    incidents = {i["id"]: i for i in read_jsonl(args.data / "incidents.jsonl")}
    if args.incident not in incidents:
        raise SystemExit(f"--incident: no incident {args.incident} in {args.data / 'incidents.jsonl'}")
    incident = incidents[args.incident]
    matcher = Matcher(args.url, args.api_key, args.embedder, args.reranker, args.policy)
    index = matcher.embed([v["profile"] for v in roster])
    needs = {role: matcher.shortlist(incident["needs"][role], roster, index, args.top_k, args.keep)
             for role in incident["roles"]}
    row, numbers = episode(incident, needs, {v["id"]: v for v in roster})
    turns, assigned = matcher.assign(row, args.max_turns, args.max_tokens)
    team = {role: numbers[number] for role, number in assigned.items()}
    return {"incident": incident["id"], "title": incident["incident"], "window": incident["window"], "needs": needs,
            "volunteers": numbers, "turns": turns, "team": team, "reward": round(sum(t["reward"] for t in turns), 3),
            "complete": set(team) == set(incident["roles"])}


def show(result: dict, roster: dict[str, dict]) -> None:
    print(f"{result['incident']}: {result['title']}, {'-'.join(result['window'])}")
    for role, need in result["needs"].items():
        picks = ", ".join(f"{v['name']} ({v['id']}, {v['score']:.2f})" for v in need["shortlist"])
        print(f"  {role}: {need['need']}\n    retrieved {len(need['retrieved'])}, reranked best: {picks}")
    print("policy:")
    for turn in result["turns"]:
        print(f"  {turn['answer'].strip()!r} -> {turn['reward']:+.2f}: {turn['observation']}")
    print(f"team ({'complete' if result['complete'] else 'incomplete'}, reward {result['reward']:+.2f}):")
    for role, vid in result["team"].items():
        print(f"  {role}: {roster[vid]['profile']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000/v1", help="the deploy's /v1 URL")
    parser.add_argument("--api-key", default="none", help="the deploy's --api-key, if it has one")
    parser.add_argument("--embedder", default="embed", help="name of the embedding model on the server")
    parser.add_argument("--reranker", default="rerank", help="name of the reranker on the server")
    parser.add_argument("--policy", default="policy", help="name of the chat model that assigns the team")
    parser.add_argument("--incident", default="heldout-000", help="id of an incident in incidents.jsonl")
    parser.add_argument("--data", type=Path, default=HERE, help="folder of volunteers.jsonl and incidents.jsonl")
    parser.add_argument("--top-k", type=int, default=10, help="profiles retrieved per need")
    parser.add_argument("--keep", type=int, default=3, help="of those, kept after reranking")
    parser.add_argument("--max-turns", type=int, default=6, help="policy turns (grpo.yaml trained with 6)")
    parser.add_argument("--max-tokens", type=int, default=24, help="tokens per policy turn (grpo.yaml: 24)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args(argv)
    result = run(args)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        show(result, {v["id"]: v for v in read_jsonl(args.data / "volunteers.jsonl")})


if __name__ == "__main__":
    main()
