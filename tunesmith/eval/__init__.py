"""Evaluation: generation metrics (exact match, BLEU, ROUGE, BERTScore) and multiple-choice accuracy, for several
models side by side: local models and adapters through the Engine, running endpoints over HTTP.

    tunesmith eval --compare base=smollm2-135m-instruct tuned=runs/prd/final --dataset prd-assistant --limit -20
    from tunesmith import EvalConfig, evaluate; evaluate(EvalConfig(adapters="runs/prd/final", dataset=["d.jsonl"]))

run.py reads top to bottom; samples.py turns rows into prompts and references; metrics.py holds the metrics by
name; targets.py gets the answers; report.py writes the table, results.json, answers.jsonl and scores.png.
"""
