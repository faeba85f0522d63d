"""Train tab: model / method / stage / LoRA / training form, presets, live YAML + command preview, memory
estimate, and Start (validate everything, create the job, enqueue it, jump to the Jobs tab).

Handlers are plain functions of plain values (a nested config dict, names, paths); `build()` wires them.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


from backend.config import JobConfig, field_help, field_limits
from backend.jobs import presets
from backend.models import format_parameters
from backend.models.methods import METHODS
from backend.vocab import Method, Stage
from ui.common import UserError, dataset_choices, md_escape, one_line

# Form fields in display order: (dotted config path, section). Every one becomes a control whose info is
# field_help(path) and whose limits are field_limits(path).
SECTIONS = {
    "Model and data": ["model", "dataset", "mix", "stage", "method", "chat_template", "thinking", "name",
                       "init_adapter"],
    "LoRA": ["lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "lora.rslora", "lora.loraplus_ratio",
             "lora.calibration_rows"],
    "Training": ["training.max_steps", "training.epochs", "training.learning_rate", "training.batch_size",
                 "training.grad_accum", "training.max_length", "training.eval_fraction", "training.seed",
                 "training.save_steps", "training.logging_steps", "training.eval_steps", "training.eval_max_rows",
                 "training.eval_batch_size", "training.warmup_ratio",
                 "training.lr_scheduler", "training.weight_decay", "training.optim", "training.max_grad_norm",
                 "training.gradient_checkpointing", "training.auto_batch_size", "training.precision",
                 "training.batching"],
    "Preference stages (DPO / ORPO / KTO)": ["alignment.beta", "alignment.loss_type", "alignment.desirable_weight",
                                             "alignment.undesirable_weight"],
    "AdaLoRA (method adalora)": ["adalora.init_r", "adalora.target_r", "adalora.warmup", "adalora.final",
                                 "adalora.interval"],
    "Prompt tuning (method prompt_tuning)": ["prompt_tuning.virtual_tokens", "prompt_tuning.init",
                                             "prompt_tuning.init_text"],
    "GaLore (method galore)": ["galore.rank", "galore.update_proj_gap", "galore.scale", "galore.save_rank"],
    "Resources": ["resources.gpus"],
}
FIELD_PATHS = [p for paths in SECTIONS.values() for p in paths]
THINKING_CHOICES = {"(template default)": None, "on": True, "off": False}   # the thinking switch's labels
MAPPING_FIELDS = ("mix",)     # a mapping is one field (one text box), not a section of fields
DEFAULT_PRESET = "quickstart"


# ---------------------------------------------------------------- plain helpers (no gradio)

def field_type(path: str):
    """The python type of a dotted field (int, float, bool, str, typing.Any, Optional[...])."""
    import typing

    cls = JobConfig
    parts = path.split(".")
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    hint = typing.get_type_hints(cls)[parts[-1]]
    if typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and f"{prefix}{key}" not in MAPPING_FIELDS:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(values: dict) -> dict:
    out: dict = {}
    for path, value in values.items():
        node = out
        parts = path.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def form_value_to_config(path: str, value):
    """A control's value -> the config value (empty text / None -> None or default handling)."""
    if path == "lora.target_modules":
        if isinstance(value, str) and value.strip() and value.strip() not in ("all-linear", "attention"):
            return [m.strip() for m in re.split(r"[,\s]+", value.strip().strip("[]")) if m.strip()]
        return (value or "all-linear").strip() if isinstance(value, str) else value
    if path in ("chat_template", "init_adapter"):
        return None if value in ("", None, "(model's own)") else value
    if path == "mix":
        return mix_from_text(value) if isinstance(value, str) else value
    if path == "thinking":
        return THINKING_CHOICES.get(value, value)
    if path == "lora.loraplus_ratio":      # the number box shows 0 when empty: 0 / empty = off
        return None if value in ("", None, 0, 0.0) else value
    hint = field_type(path)
    if hint is int and isinstance(value, float) and value == int(value):
        return int(value)
    if isinstance(value, str):
        return value.strip()
    return value


def config_to_form_value(path: str, value):
    if path == "lora.target_modules" and isinstance(value, list):
        return ", ".join(value)
    if path == "chat_template" and value is None:
        return "(model's own)"
    if path == "init_adapter" and value is None:
        return ""
    if path == "thinking":
        return next((label for label, choice in THINKING_CHOICES.items() if choice is value), value)
    if path == "mix" and isinstance(value, dict):
        return ", ".join(f"{name}: {share:g}" if isinstance(share, (int, float)) else f"{name}: {share}"
                         for name, share in value.items())
    if path == "lora.loraplus_ratio" and value is None:
        return 0
    return value


def mix_from_text(text: str):
    """'replay: 0.1, my-set: 0.05' -> {'replay': 0.1, 'my-set': 0.05}; text that is no such list is returned as
    it is, for the config's check to name."""
    pairs = [part for part in (text or "").split(",") if part.strip()]
    mix = {}
    for part in pairs:
        name, sep, share = part.rpartition(":")
        try:
            if not sep:
                raise ValueError(part)
            mix[name.strip()] = float(share)
        except ValueError:
            return text.strip()
    return mix


def form_to_config_dict(values: list, paths: list[str] = FIELD_PATHS) -> dict:
    """Control values (in FIELD_PATHS order) -> a nested job config dict."""
    return unflatten({p: form_value_to_config(p, v) for p, v in zip(paths, values)})


def config_dict_to_form(data: dict, paths: list[str] = FIELD_PATHS) -> list:
    """A (partial) config dict -> control values, defaults filled in."""
    full = flatten(JobConfig.from_dict(data).to_dict())
    return [config_to_form_value(p, full.get(p)) for p in paths]


# ---------------------------------------------------------------- presets (backend.jobs.presets: bundled first)

def preset_names() -> list[str]:
    return presets.names()


def load_preset(name: str) -> dict:
    """A preset's full config dict (defaults filled in)."""
    try:
        return presets.load(name).to_dict()
    except presets.PresetError as error:
        raise UserError(str(error)) from None


def save_preset(name: str, data: dict) -> str:
    """Save the form as a user preset; returns a one-line message."""
    try:
        path = presets.save(name, data)
    except presets.PresetError as error:
        raise UserError(str(error)) from None
    return f"Saved preset '{path.stem}' ({path})."


# ---------------------------------------------------------------- models and datasets

def model_choices() -> list[tuple[str, str]]:
    """(label, name) of each registered model: parameters, size on disk, ready or not."""
    from backend import models
    out = []
    for info in models.list_models():
        size = _folder_size(info.path)
        parts = [info.name, f"{format_parameters(info.parameters)} params" if info.parameters else None,
                 f"{size / 1e9:.2f} GB" if size else None, None if info.ready else "converted at first use"]
        out.append((" · ".join(p for p in parts if p), info.name))
    return out


def _folder_size(path: str) -> int:
    folder = Path(path)
    if not folder.is_dir():
        return 0
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def import_model(path: str, name: str = "") -> str:
    from backend import models
    path = (path or "").strip()
    if not path:
        raise UserError("enter the path of a Hugging Face model folder or a .gguf file on this machine")
    info = models.import_model(Path(path), name=(name or "").strip() or None)
    return f"Imported **{info.name}** ({format_parameters(info.parameters)} params, {info.source})."


# ---------------------------------------------------------------- previews

def config_yaml(data: dict) -> str:
    return JobConfig.from_dict(data).to_yaml()


def _cli_value(value) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def train_command(data: dict, preset: str | None = DEFAULT_PRESET) -> str:
    """The equivalent `lorastudio train PRESET --set ...` (only the keys that differ from the preset)."""
    config = JobConfig.from_dict(data)
    base = preset if preset and preset in preset_names() else None
    try:
        reference = flatten(load_preset(base)) if base else flatten(JobConfig().to_dict())
    except UserError:
        base, reference = None, flatten(JobConfig().to_dict())
    current = flatten(config.to_dict())
    overrides = [f"{k}={_cli_value(v)}" for k, v in current.items() if reference.get(k) != v]
    parts = ["lorastudio", "train", base or "quickstart"]
    if base is None:
        reference = flatten(load_preset("quickstart"))
        overrides = [f"{k}={_cli_value(v)}" for k, v in current.items() if reference.get(k) != v]
    for item in overrides:
        parts += ["--set", item]
    return " ".join(shlex.quote(p) for p in parts)


BATCHING_WHAT = {
    "pad": "each batch is padded to its longest row",
    "group_by_length": "rows of similar length are batched together, so little padding is left",
    "padding_free": "the batch's rows are laid end to end with no padding; position ids keep them apart",
}


def batching_line(config: JobConfig, cuda: bool) -> str:
    """One line: what training.batching (auto resolved for this machine) will do."""
    from backend.config import resolve_batching

    if config.stage == Stage.PRETRAIN:
        return ("Batching: pretrain packs the documents into full blocks of max_length tokens, so no batch holds "
                "padding (training.batching applies to SFT).")
    if config.stage != Stage.SFT:
        return "Batching: preference stages pad each batch to its longest row (training.batching applies to SFT)."
    mode = resolve_batching(config.training.batching, cuda, config.training.batch_size * config.training.max_length,
                            config.method)
    chosen = f"auto = {mode}" if config.training.batching == "auto" else mode
    where = "this machine's GPU" if cuda else "this machine's CPU"
    return f"Batching: {chosen} on {where}: {BATCHING_WHAT[mode]}."


def estimate_html(data: dict) -> str:
    """The pre-flight memory estimate with a fits / tight / will-not-fit badge per device, and the batching line."""
    from backend import models
    from backend.models import estimate as estimate_draft

    config = JobConfig.from_dict(data)
    devices = estimate_draft.devices()
    cuda = any(d.name.startswith("GPU") for d in devices)
    batching = f"<div class='ls-batching'>{md_escape(batching_line(config, cuda))}</div>"
    info = next((m for m in models.list_models() if m.name == config.model), None)
    path = info.path if info else (config.model if Path(config.model).is_dir() else None)
    params = info.parameters if info else 0
    if info is None and path is None:
        return ("<div class='ls-estimate'>Memory estimate: unknown model size for "
                f"<code>{md_escape(config.model)}</code> (import it first for an estimate).</div>{batching}")
    est = estimate_draft.estimate(config, model_path=path, parameters=params, cuda=cuda)
    gib = lambda b: f"{b / 1024 ** 3:.2f} GiB"
    colours = {"fits": "#2e7d32", "tight": "#ef6c00", "will not fit": "#c62828"}
    rows = []
    for device in devices:
        v = estimate_draft.verdict(est.total, device)
        rows.append(f"<li>{md_escape(device.name)} ({gib(device.total_bytes)}): "
                    f"<span class='ls-badge' data-verdict='{v}' style='background:{colours[v]};color:white;"
                    f"padding:1px 8px;border-radius:8px'>{v}</span></li>")
    notes = "".join(f"<li><i>{md_escape(n)}</i></li>" for n in est.notes)
    return (f"<div class='ls-estimate'><b>Memory estimate: {gib(est.total)}</b> per device "
            f"(weights {gib(est.weights)}, adapter + grads {gib(est.adapter)}, optimizer {gib(est.optimizer)}, "
            f"activations {gib(est.activations)}, overhead {gib(est.overhead)}; "
            f"{format_parameters(est.adapter_params)} trainable parameters)<ul>{''.join(rows)}{notes}</ul></div>"
            f"{batching}")


def previews(data: dict, preset: str | None) -> tuple[str, str, str]:
    """(yaml, command, estimate html) for the live preview; never raises."""
    try:
        text = config_yaml(data)
    except Exception as error:  # noqa: BLE001
        text = f"# cannot build the config: {one_line(error)}"
    try:
        command = train_command(data, preset)
    except Exception as error:  # noqa: BLE001
        command = f"# {one_line(error)}"
    try:
        estimate = estimate_html(data)
    except Exception as error:  # noqa: BLE001
        estimate = f"<div class='ls-estimate'>Memory estimate unavailable: {md_escape(one_line(error))}</div>"
    return text, command, estimate


# ---------------------------------------------------------------- start

def check_everything(data: dict) -> tuple[JobConfig, list[str]]:
    """The config's own problems plus model, dataset and init-adapter checks, all at once."""
    from backend.jobs import preflight

    config = JobConfig.from_dict(data)
    return config, preflight.problems(config)


def start_job(data: dict) -> tuple[str | None, list[str]]:
    """Validate everything; on success create + enqueue the job. Returns (job id, []) or (None, errors)."""
    config, errors = check_everything(data)
    if errors:
        return None, errors
    from backend import jobs
    from workers.queue import enqueue
    job = jobs.create(config)
    enqueue(job.id)
    return job.id, []


def errors_markdown(errors: list[str]) -> str:
    if not errors:
        return ""
    items = "\n".join(f"- {md_escape(e)}" for e in errors)
    return f"**The job was not started: {len(errors)} problem(s) to fix**\n\n{items}"


# ---------------------------------------------------------------- gradio wiring

@dataclass
class TrainTab:
    fields: dict = field(default_factory=dict)   # dotted config path -> component
    preset: object = None
    preset_name: object = None
    save_preset_btn: object = None
    preset_status: object = None
    import_path: object = None
    import_name: object = None
    import_btn: object = None
    import_status: object = None
    yaml_view: object = None
    command_view: object = None
    estimate: object = None
    start_btn: object = None
    start_status: object = None
    started_job: object = None     # gr.State: id of the job just started (the app jumps to it)

    def inputs(self) -> list:
        return [self.fields[p] for p in FIELD_PATHS]

    def form_values(self, data: dict) -> dict:
        """{control: value} that fills the form with a (partial) config dict, defaults filled in."""
        return dict(zip(self.inputs(), config_dict_to_form(data)))


def _control(gr, path: str, value):
    limits = field_limits(path)
    info = field_help(path)
    label = path.split(".")[-1].replace("_", " ")
    if path == "model":
        return gr.Dropdown(choices=_safe(model_choices), value=value, label="base model", info=info,
                           allow_custom_value=True, min_width=300, scale=2, elem_classes=["ls-train-wide"])
    if path == "dataset":
        return gr.Dropdown(choices=_safe(dataset_choices), value=value, label="dataset", info=info,
                           allow_custom_value=True, min_width=300, scale=2, elem_classes=["ls-train-wide"])
    if path == "mix":
        return gr.Textbox(value=value, label="mix in (dataset: share, ...)", info=info, placeholder="replay: 0.1")
    if path == "method":
        return gr.Radio(choices=[(METHODS[Method(m)].label, m) for m in limits["choices"]], value=value, label="method",
                        info=info)
    if path == "chat_template":
        return gr.Dropdown(choices=["(model's own)"] + [c for c in limits["choices"] if c], value=value,
                           label="chat template", info=info)
    if path == "thinking":
        return gr.Radio(choices=list(THINKING_CHOICES), value=value, label="thinking", info=info)
    if path == "lora.target_modules":
        return gr.Dropdown(choices=["all-linear", "attention"], value=value, label="target modules", info=info,
                           allow_custom_value=True)
    if path == "lora.rslora":
        return gr.Checkbox(value=value, label="rsLoRA", info=info)
    if path == "lora.loraplus_ratio":
        return gr.Number(value=value, label="LoRA+ ratio", info=info + " (0 = off)", minimum=0)
    if "choices" in limits:
        return gr.Dropdown(choices=list(limits["choices"]), value=value, label=label, info=info)
    hint = field_type(path)
    if hint is bool:
        return gr.Checkbox(value=value, label=label, info=info)
    if hint in (int, float):
        low, high = limits.get("min"), limits.get("max")
        if hint is float and low is not None and high is not None and high <= 1.0 and path != "training.learning_rate":
            return gr.Slider(minimum=low, maximum=high, step=0.01, value=value, label=label, info=info)
        return gr.Number(value=value, label=label, info=info, minimum=low, maximum=high,
                         precision=0 if hint is int else None, step=1 if hint is int else None)
    return gr.Textbox(value=value, label=label, info=info)


def _safe(fn):
    try:
        return fn()
    except Exception:  # noqa: BLE001 - an empty list, the page still loads
        return []


def build(gr) -> TrainTab:
    """Build the Train tab's components inside the current gr.Tab context."""
    tab = TrainTab()
    try:
        initial = load_preset(DEFAULT_PRESET)
    except Exception:  # noqa: BLE001
        initial = JobConfig().to_dict()
    values = dict(zip(FIELD_PATHS, config_dict_to_form(initial)))
    with gr.Row():
        tab.preset = gr.Dropdown(choices=preset_names(), value=DEFAULT_PRESET, label="preset",
                                 info="A ready job config; pick one to fill the form.", scale=2)
        tab.preset_name = gr.Textbox(label="save the form as preset", placeholder="my-run", scale=2)
        tab.save_preset_btn = gr.Button("Save as preset", scale=1)
    tab.preset_status = gr.Markdown()
    with gr.Row():
        with gr.Column(scale=3):
            for section, paths in SECTIONS.items():
                with gr.Accordion(section, open=section in ("Model and data", "LoRA", "Training")):
                    toggles = [p for p in paths if field_type(p) is bool]
                    with gr.Row(equal_height=False):
                        for path in paths:
                            if path not in toggles:
                                tab.fields[path] = _control(gr, path, values[path])
                    if toggles:
                        with gr.Row():
                            for path in toggles:
                                tab.fields[path] = _control(gr, path, values[path])
            with gr.Accordion("Import a model (local Hugging Face folder or .gguf file)", open=False):
                with gr.Row():
                    tab.import_path = gr.Textbox(label="path on this machine", placeholder="~/models/my-model.gguf",
                                                 scale=3)
                    tab.import_name = gr.Textbox(label="name (optional)", scale=1)
                    tab.import_btn = gr.Button("Import", scale=1)
                tab.import_status = gr.Markdown()
        with gr.Column(scale=2):
            tab.estimate = gr.HTML(label="memory estimate")
            tab.start_btn = gr.Button("Start training", variant="primary", elem_classes=["ls-start"])
            tab.start_status = gr.Markdown(elem_classes=["ls-start-status"])
            tab.command_view = gr.Code(language="shell", label="equivalent command", lines=2, interactive=False)
            tab.yaml_view = gr.Code(language="yaml", label="job config (YAML)", lines=20, interactive=False)
    tab.started_job = gr.State(None)
    _wire(gr, tab)
    return tab


def _wire(gr, tab: TrainTab) -> None:
    inputs = tab.inputs()

    def on_change(preset, *values):
        return previews(form_to_config_dict(list(values)), preset)

    preview_outputs = [tab.yaml_view, tab.command_view, tab.estimate]
    for component in inputs:
        component.change(on_change, [tab.preset, *inputs], preview_outputs, show_progress="hidden",
                         trigger_mode="always_last", queue=False)

    def on_preset(name):
        try:
            data = load_preset(name)
        except Exception as error:  # noqa: BLE001
            gr.Warning(one_line(error))
            return gr.skip()          # the form stays as it is
        return tab.form_values(data)

    tab.preset.input(on_preset, tab.preset, inputs)

    def on_save(name, *values):
        try:
            message = save_preset(name, form_to_config_dict(list(values)))
        except Exception as error:  # noqa: BLE001
            return f"⚠️ {one_line(error)}", gr.skip()
        gr.Info(message)
        return message, gr.update(choices=preset_names())

    tab.save_preset_btn.click(on_save, [tab.preset_name, *inputs], [tab.preset_status, tab.preset])

    def on_import(path, name):
        try:
            message = import_model(path, name)
        except Exception as error:  # noqa: BLE001
            return f"⚠️ {one_line(error)}", gr.skip()
        return message, gr.update(choices=_safe(model_choices))

    tab.import_btn.click(on_import, [tab.import_path, tab.import_name], [tab.import_status, tab.fields["model"]],
                         show_progress="full")


def wire_start(gr, tab: TrainTab, on_started_outputs: list, on_started) -> None:
    """Start: validate -> create -> enqueue; on success `on_started(job_id)` gives {component: value} for
    on_started_outputs (the app uses them to switch to the Jobs tab and select the job)."""
    inputs = tab.inputs()

    def on_start(*values):
        try:
            job_id, errors = start_job(form_to_config_dict(list(values)))
        except Exception as error:  # noqa: BLE001
            job_id, errors = None, [one_line(error)]
        if errors:
            gr.Warning(f"The job was not started: {len(errors)} problem(s); see the list under Start.")
            return {tab.start_status: errors_markdown(errors)}
        gr.Info(f"Job {job_id} queued.")
        return {tab.start_status: f"Job **{job_id}** queued.", **on_started(job_id)}

    tab.start_btn.click(on_start, inputs, [tab.start_status, *on_started_outputs], show_progress="full")


__all__ = ["TrainTab", "build", "wire_start", "start_job", "check_everything", "previews", "train_command",
           "config_yaml", "estimate_html", "load_preset", "save_preset", "preset_names", "model_choices",
           "form_to_config_dict", "config_dict_to_form", "FIELD_PATHS"]
