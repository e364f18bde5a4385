"""`tunesmith web-ui`: the lifecycle in a browser (Gradio). Every form is generated from the command's own config
(ui/web/forms.py), shows the exact CLI command and YAML it will run and the memory plan before Start, and starts that
command as a job of its own (ui/web/jobs.py) that outlives the page; the Runs tab finds jobs again from the workspace.

    tunesmith web-ui                                  # http://127.0.0.1:7860, one local user
    tunesmith web-ui --auth users.yaml --host 0.0.0.0 # users log in; each has a workspace no other can see
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import gradio as gr  # this module is imported only by `tunesmith web-ui` (api.web_ui)

from tunesmith import api
from tunesmith.config import DEFAULT_MODEL, DeployConfig, ExportConfig, PTConfig, SFTConfig
from tunesmith.config.eval import EvalConfig
from tunesmith.config.rlhf import RLHFConfig
from tunesmith.config.webui import WebUIConfig
from tunesmith.errors import TunesmithError
from tunesmith.ui.web import jobs
from tunesmith.ui.web.forms import Form, command_line, yaml_text
from tunesmith.ui.web.workspace import LOCAL, UPLOADS, Workspace, password_ok, read_users

log = logging.getLogger("tunesmith")
TRAIN_MAIN = ("model", "dataset", "tuner", "output_dir", "max_steps", "epochs", "learning_rate", "batch_size",
              "max_length", "adapters")
LAYOUT = ("nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port")  # a browser job is one node's


def build_app(cfg: WebUIConfig) -> Any:
    root = Path(cfg.root).expanduser().resolve()
    isolated = cfg.auth is not None

    def workspace(request: gr.Request | None) -> Workspace:
        user = getattr(request, "username", None) or LOCAL
        return Workspace(root, user, isolated)

    with gr.Blocks(title="tunesmith") as app:
        who = gr.Markdown(elem_id="who")
        def greet(request: gr.Request) -> str:
            return f"**tunesmith** - workspace of `{workspace(request).user}`"

        app.load(greet, None, who)
        with gr.Tab("Data", elem_id="tab-data"):
            _data_tab(gr, workspace)
        with gr.Tab("Train", elem_id="tab-train"):
            with gr.Tab("SFT"):
                _job_form(gr, workspace, "sft", SFTConfig, TRAIN_MAIN + ("loss_on",), plan=True)
            with gr.Tab("Continued pretraining"):
                _job_form(gr, workspace, "pt", PTConfig, TRAIN_MAIN, plan=True)
        with gr.Tab("Align", elem_id="tab-align"):
            _job_form(gr, workspace, "rlhf", RLHFConfig, ("method",) + TRAIN_MAIN, plan=True)
        with gr.Tab("Chat", elem_id="tab-chat"):
            _chat_tab(gr, workspace)
        with gr.Tab("Evaluate", elem_id="tab-eval"):
            _job_form(gr, workspace, "eval", EvalConfig, ("compare", "model", "adapters", "dataset", "limit", "metrics"),
                      folder_key="output_dir")
        with gr.Tab("Export", elem_id="tab-export"):
            _job_form(gr, workspace, "export", ExportConfig, ("adapters", "output", "dtype"), folder_key="output")
        with gr.Tab("Serve", elem_id="tab-serve"):
            _job_form(gr, workspace, "deploy", DeployConfig, ("adapters", "model", "port", "api_key"), folder_key="")
        with gr.Tab("Runs", elem_id="tab-runs"):
            _runs_tab(gr, workspace)
    return app


# -----------------------------------------------------------------------------
# Forms that start jobs


def _job_form(gr: Any, workspace, command: str, cls, main: tuple[str, ...], plan: bool = False,
              folder_key: str = "output_dir") -> None:
    name = command.replace(" ", "-")
    form = Form(cls, main, hidden=LAYOUT, name=name)
    with gr.Row():
        preview = gr.Button("Preview", elem_id=f"{name}-preview")
        start = gr.Button("Start", variant="primary", elem_id=f"{name}-start")
    shown = gr.Code(label="command and YAML", language="yaml", elem_id=f"{name}-command")
    verdict = gr.Markdown(elem_id=f"{name}-verdict")

    def describe(request: gr.Request, *raw):
        try:
            cfg, values = form.config(*raw)
            workspace(request).check_values(cls, values)
        except TunesmithError as err:
            return "", f"**cannot run:** {err}"
        text = f"# {command_line(command, values)}\n" + yaml_text(values)
        return text, _plan(cfg) if plan else ""

    def launch(request: gr.Request, *raw):
        text, note = describe(request, *raw)
        if not text:
            return text, note
        _, values = form.config(*raw)
        job = jobs.start(workspace(request), command, values, folder_key)
        return text, f"{note}\n\nstarted job **{job.id}** (see the Runs tab); it keeps running if you close this page"

    preview.click(describe, form.components, [shown, verdict])
    start.click(launch, form.components, [shown, verdict])


def _plan(cfg) -> str:
    """The memory plan for these settings, as `tunesmith plan` gives it."""
    from tunesmith.config import PlanConfig

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = api.plan(PlanConfig(model=cfg.model, tuner=cfg.tuner, max_length=cfg.max_length,
                                         batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, json=True))
    except (TunesmithError, OSError) as err:
        return f"memory plan: not available ({err})"
    return f"**memory plan:** {result['message']}"


# -----------------------------------------------------------------------------
# Data


def _data_tab(gr: Any, workspace) -> None:
    upload = _upload(gr, "dataset", "a dataset or eval data (JSONL, JSON, CSV, Parquet)", "data-upload")
    with gr.Row():
        dataset = gr.Textbox(label="dataset (a file in your workspace, or a registry name)", elem_id="data-dataset")
        model = gr.Textbox(value=DEFAULT_MODEL, label="model (for token lengths and the loss view)", elem_id="data-model")
    check = gr.Button("Check", variant="primary", elem_id="data-check")
    summary = gr.Markdown(elem_id="data-summary")
    lengths = gr.Plot(label="tokens per row")
    rows = gr.HighlightedText(label="first rows as the model sees them (highlighted: what the loss trains)",
                              elem_id="data-rows", combine_adjacent=True)
    with gr.Accordion("Other uploads: DeepSpeed config, reward plugin", open=False):
        with gr.Row():
            deepspeed = _upload(gr, "deepspeed", "a DeepSpeed config (JSON), for deepspeed", "data-upload-deepspeed")
            plugin = _upload(gr, "plugin", "a reward plugin (Python), for rewards.plugin", "data-upload-plugin")
        kept = gr.Markdown(elem_id="data-uploaded")

    def keep(file, kind: str, request: gr.Request) -> str | None:
        if file is None:
            return None
        try:
            return workspace(request).keep_upload(file, kind)
        except TunesmithError as err:  # the wrong type: said in the page, the file not kept
            raise gr.Error(str(err)) from None

    def upload_dataset(file, request: gr.Request):
        return keep(file, "dataset", request) or gr.update()

    def upload_deepspeed(file, request: gr.Request):
        path = keep(file, "deepspeed", request)
        return f"uploaded `{path}`: give it as `deepspeed` (Advanced, in Train and Align)" if path else gr.update()

    def upload_plugin(file, request: gr.Request):
        path = keep(file, "plugin", request)
        return f"uploaded `{path}`: give it as `rewards.plugin` (Advanced, in Align)" if path else gr.update()

    upload.upload(upload_dataset, upload, dataset)
    deepspeed.upload(upload_deepspeed, deepspeed, kept)
    plugin.upload(upload_plugin, plugin, kept)

    def report(d: str, m: str, request: gr.Request):
        return data_report(workspace(request), d, m)

    check.click(report, [dataset, model], [summary, lengths, rows])


def _upload(gr: Any, kind: str, label: str, elem_id: str) -> Any:
    """A file input for one kind of upload; its picker offers the types that kind accepts (the server checks again)."""
    return gr.File(label=f"upload {label}", elem_id=elem_id, file_types=list(UPLOADS[kind][1]))


def data_report(ws: Workspace, dataset: str, model: str) -> tuple[str, Any, list]:
    from tunesmith.data.load import load_rows
    from tunesmith.data.rows import Conversation

    try:
        for given in (dataset, model):  # checked whole, as a job's values are: `../bob/x.jsonl#5` is a path too
            ws.path(given)
        spec = str(ws.path(dataset).relative_to(ws.dir)) if (ws.dir / dataset).exists() else dataset
        with contextlib.chdir(ws.dir):
            data = load_rows([spec], kind="sft", seed=0)
    except TunesmithError as err:
        return f"**could not read:** {err}", None, []
    lines = [f"**{len(data.rows)} good rows**, {len(data.problems)} bad" +
             (f"; formats: {', '.join(f'{k} {v}' for k, v in data.formats.items())}" if data.formats else "")]
    lines += [f"- `{p}`" for p in data.problems[:20]]
    try:
        from tunesmith.models.load import load_tokenizer, resolve
        from tunesmith.templates import IGNORE, Template

        template = Template(load_tokenizer(resolve(model)))
    except TunesmithError as err:
        return "\n".join(lines + [f"(no token view: {err})"]), None, []
    convs = [r for r in data.rows if isinstance(r, Conversation)]
    rendered = [template.render(r.messages, tools=r.extra.get("tools")) for r in convs[:200]]
    pieces: list[tuple[str, str | None]] = []
    for ids, labels in rendered[:3]:
        for token, label in zip(ids, labels):
            pieces.append((template.tokenizer.decode([token]), "trained" if label != IGNORE else None))
        pieces.append(("\n\n", None))
    return "\n".join(lines), _histogram([len(ids) for ids, _ in rendered]), pieces


def _histogram(lengths: list[int]):
    if not lengths:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.hist(lengths, bins=30)
    ax.set_xlabel("tokens")
    ax.set_ylabel("rows")
    fig.tight_layout()
    return fig


# -----------------------------------------------------------------------------
# Chat: two models side by side


_ENGINES: dict[tuple[str, str], Any] = {}


def _chat_tab(gr: Any, workspace) -> None:
    with gr.Row():
        left = gr.Textbox(value=DEFAULT_MODEL, label="left: a model or a run's final folder", elem_id="chat-left")
        right = gr.Textbox(label="right (optional): another model or run", elem_id="chat-right")
    with gr.Row():
        max_tokens = gr.Number(value=128, label="max_tokens", precision=0)
        temperature = gr.Number(value=0.0, label="temperature")
    with gr.Row():
        left_chat = gr.Chatbot(label="left", elem_id="chat-left-answers")
        right_chat = gr.Chatbot(label="right", elem_id="chat-right-answers")
    message = gr.Textbox(label="message", elem_id="chat-message")
    send = gr.Button("Send", variant="primary", elem_id="chat-send")

    def answer(spec: str, history: list, text: str, tokens: float, temp: float, ws: Workspace) -> list:
        if not spec.strip():
            return history
        from tunesmith.config import InferConfig

        key = (ws.user, spec)
        if key not in _ENGINES:
            _ENGINES[key] = _engine_for(ws, spec.strip())
        engine = _ENGINES[key]
        messages = [*({"role": m["role"], "content": m["content"]} for m in history), {"role": "user", "content": text}]
        params = api.sampling_params(InferConfig(max_tokens=int(tokens), temperature=float(temp)))
        reply = engine.chat([messages], params)[0].choices[0].text
        return [*history, {"role": "user", "content": text}, {"role": "assistant", "content": reply}]

    def both(left_spec, right_spec, lh, rh, text, tokens, temp, request: gr.Request):
        ws = workspace(request)
        try:
            return answer(left_spec, lh or [], text, tokens, temp, ws), answer(right_spec, rh or [], text, tokens, temp, ws), ""
        except TunesmithError as err:
            raise gr.Error(str(err)) from None

    send.click(both, [left, right, left_chat, right_chat, message, max_tokens, temperature],
               [left_chat, right_chat, message])


def _engine_for(ws: Workspace, spec: str) -> Any:
    """A run's final folder or a model folder in the workspace, else a registry name or hub id."""
    from tunesmith.config import InferConfig

    local = ws.path(spec)  # refuses absolute paths and .. in a shared server
    if (local / "adapter_config.json").exists():
        base = api.base_model(str(local))  # recorded as the job saw it: relative to the workspace it ran in
        if (ws.dir / base).is_dir():
            return api.engine(InferConfig(adapters=str(local), model=str(ws.dir / base)))
        return api.engine(InferConfig(adapters=str(local)))
    if (local / "config.json").exists():
        return api.engine(InferConfig(model=str(local)))
    return api.engine(InferConfig(model=spec))


# -----------------------------------------------------------------------------
# Runs: every job of this workspace, live


def _runs_tab(gr: Any, workspace) -> None:
    import pandas as pd

    with gr.Row():
        picked = gr.Dropdown(label="job", choices=[], elem_id="runs-job", allow_custom_value=True)
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
    state = gr.Markdown(elem_id="runs-status")
    plot = gr.LinePlot(x="step", y="loss", label="loss", elem_id="runs-loss")
    tail = gr.Textbox(label="log", lines=12, elem_id="runs-log", autoscroll=True)
    with gr.Row():
        stop = gr.Button("Stop (checkpoint kept)", elem_id="runs-stop")
        # only training runs that ended short of their end with a complete checkpoint (jobs.resumable)
        to_resume = gr.Dropdown(label="run to resume (stopped or failed, with a checkpoint)", choices=[],
                                elem_id="runs-resumable")
        resume = gr.Button("Resume", elem_id="runs-resume")
    timer = gr.Timer(2.0)

    def listing(current, request: gr.Request):
        found = jobs.jobs(workspace(request))
        choices = [j.id for j in found]
        return gr.update(choices=choices, value=current if current in choices else (choices[0] if choices else None))

    def resume_choices(current, shown_job, request: gr.Request):
        """The runs Resume offers; the one picked stays, else the job on show once it can resume (after Stop)."""
        choices = [j.id for j in jobs.resumable(workspace(request))]
        value = next((c for c in (current, shown_job) if c in choices), choices[0] if choices else None)
        return gr.update(choices=choices, value=value)

    def show(job_id, request: gr.Request):
        job = jobs.find(workspace(request), job_id or "")
        if job is None:
            return "no job selected", pd.DataFrame({"step": [], "loss": []}), ""
        rows = [r for r in jobs.metrics(job) if "loss" in r]
        last = rows[-1] if rows else {}
        eta = f", step {last['step']}/{last['total_steps']}, ETA {last['eta_s']:.0f} s" if last else ""
        text = f"**{job.id}**: {jobs.status(job)}{eta}\n\n`tunesmith {' '.join(job.argv)}` in `{job.folder}`"
        frame = pd.DataFrame({"step": [r["step"] for r in rows], "loss": [r["loss"] for r in rows]})
        return text, frame, jobs.log_tail(job)

    def show_all(job_id, current, request: gr.Request):
        # one answer: the resume choices never lag behind a status that reads "stopped"
        return *show(job_id, request), resume_choices(current, job_id, request)

    def stop_job(job_id, request: gr.Request):
        job = jobs.find(workspace(request), job_id or "")
        if job is not None:
            jobs.stop(job)
        return gr.update()

    def resume_job(job_id, request: gr.Request):
        ws = workspace(request)
        job = jobs.find(ws, job_id or "")
        if job is None:
            raise gr.Error("pick a run to resume: a stopped or failed training run with a checkpoint")
        try:
            resumed = jobs.resume(ws, job)  # first: the list below must hold the new job it selects
        except TunesmithError as err:
            raise gr.Error(str(err)) from None
        return gr.update(choices=[j.id for j in jobs.jobs(ws)], value=resumed.id)

    refresh.click(listing, picked, picked)
    refresh.click(resume_choices, [to_resume, picked], to_resume)
    timer.tick(show_all, [picked, to_resume], [state, plot, tail, to_resume])
    picked.change(show_all, [picked, to_resume], [state, plot, tail, to_resume])
    stop.click(stop_job, picked, picked)
    resume.click(resume_job, to_resume, picked)
    timer.tick(listing, picked, picked)  # new jobs appear, also after the page was closed and opened again


# -----------------------------------------------------------------------------
# Running the server


def run(cfg: WebUIConfig, block: bool = True) -> Any:
    """Serve until stopped; block=False returns the running app at once (tests talk to it, then app.close())."""
    users = read_users(cfg.auth) if cfg.auth else None
    Path(cfg.root).expanduser().mkdir(parents=True, exist_ok=True)
    app = build_app(cfg)
    auth = (lambda name, password: password_ok(users, name, password)) if users else None
    where = "every interface" if cfg.host in ("0.0.0.0", "::") else cfg.host
    print(f"tunesmith web-ui on http://{cfg.host}:{cfg.port} (listening on {where}; "
          f"{'users log in from ' + cfg.auth if users else 'one local user, no login'}); workspaces in {cfg.root}",
          flush=True)
    app.queue(default_concurrency_limit=4).launch(server_name=cfg.host, server_port=cfg.port, auth=auth,
                                                  show_error=True, quiet=True, allowed_paths=[],
                                                  prevent_thread_lock=not block)
    return app

