"""The baseline a user writes by hand: FastAPI, one `model.generate` per request, behind a lock.

    python bench/naive_server.py MODEL_FOLDER --port 8102

Streams OpenAI-style chunks with TextIteratorStreamer so the load generator can measure time to first token."""

from __future__ import annotations

import argparse
import json
import threading
import time

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


def build(folder: str) -> FastAPI:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        ids = tokenizer.apply_chat_template(body["messages"], add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True).to(device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

        def run():
            with lock, torch.inference_mode():
                model.generate(**ids, max_new_tokens=body.get("max_tokens", 64), do_sample=False, streamer=streamer,
                               pad_token_id=tokenizer.pad_token_id)

        threading.Thread(target=run, daemon=True).start()

        def events():
            for text in streamer:
                chunk = {"object": "chat.completion.chunk", "created": int(time.time()), "model": "naive",
                         "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--port", type=int, default=8102)
    args = parser.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")
