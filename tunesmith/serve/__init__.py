"""OpenAI-compatible HTTP server, split as vLLM's entrypoints: protocol.py (schemas), serving.py (what every route
shares: limits, admission, running requests over the engine), chat.py and completion.py (one API each), errors.py,
metrics.py, openapi.py (/openapi.json as served), routes.py (HTTP, dispatch only), app.py (the app and its life).
Run: tunesmith deploy --adapters runs/NAME/final. Needs the `serve` extra (pip install tunesmith[serve])."""
