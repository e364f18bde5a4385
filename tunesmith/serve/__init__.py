"""OpenAI-compatible HTTP server: protocol.py (schemas), serving.py (logic), routes.py (HTTP), app.py (the app and
its life). Run: tunesmith deploy --adapters runs/NAME/final. Needs the `serve` extra (pip install tunesmith[serve])."""
