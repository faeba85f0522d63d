"""The report's "benchmarks" section: lm-evaluation-harness tasks, run by lm-eval's own engine on the loaded model.

Each variant is wrapped in `lm_eval.models.huggingface.HFLM(pretrained=<the loaded PeftModel>)` while it is
active (the base: the same model with its adapters disabled), so nothing is loaded a second time and lm-eval's
own `peft=` path (which would load the base again from the hub or a path) is never taken. The tasks are loaded
once and evaluated for every variant with `lm_eval.evaluator.simple_evaluate`.

Where tasks come from (`task_folders`): the tasks the studio ships (backend/evaluate/tasks/, e.g. studio_arith,
offline by construction), the folders named in $LORASTUDIO_LM_EVAL_TASKS (os.pathsep-separated) or passed in
`folders` (a task YAML with its data next to it: a relative `data_files` or `dataset_path` is resolved against
the YAML's folder, so the task runs from any working directory), and lm-eval's built-in tasks (their names are
accepted; their datasets come from the Hugging Face cache, and a task whose dataset is not there gets one
sentence saying so when the hub cannot be reached). lm-eval's ~15,000 built-in names are indexed only when a
name is not found in the folders (about 10 s, once per process and set of folders).

Each task's metrics (the task's metric_list, first filter) become one Metric per metric with a value per
variant; the standard errors go into the metric's help line.
"""
from __future__ import annotations

import functools
import math
import os
import re
import time
from pathlib import Path

from backend.evaluate.common import EvalContext, EvalError, Metric, Progress, SectionResult

SECTION = "benchmarks"
TASKS_DIR = Path(__file__).with_name("tasks")
TASKS_ENV = "LORASTUDIO_LM_EVAL_TASKS"
BOOTSTRAP_ITERS = 1000          # for metrics whose stderr lm-eval bootstraps (its default, 100,000, takes minutes)
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas", "imagefolder", "audiofolder", "webdataset",
                   "xml", "sql"}
_INSTALL = "lm-eval is not installed in this environment; install it with `pip install 'lm-eval>=0.4.8,<0.5'`"


def task_folders(folders: list[str] | str | None = None) -> tuple[list[Path], list[str]]:
    """(folders to index, notes): the shipped tasks, then $LORASTUDIO_LM_EVAL_TASKS, then `folders`; a folder
    that does not exist is left out with a note."""
    named: list[tuple[str, str]] = []
    for entry in (os.environ.get(TASKS_ENV) or "").split(os.pathsep):
        if entry.strip():
            named.append((entry.strip(), TASKS_ENV))
    for entry in ([folders] if isinstance(folders, str) else list(folders or [])):
        if str(entry).strip():
            named.append((str(entry).strip(), "the task folders given"))
    found, notes = [TASKS_DIR], []
    for entry, where in named:
        path = Path(entry).expanduser()
        if path.is_dir():
            if path.resolve() not in {p.resolve() for p in found}:
                found.append(path)
        else:
            notes.append(f"task folder {entry} (from {where}) is not a folder on this machine, so its tasks were "
                         "not looked for")
    return found, notes


def list_tasks(folders: list[str] | str | None = None) -> list[str]:
    """The task names the UI can offer: the shipped tasks and those in the user's folders (tasks, groups and
    tags), sorted. lm-eval's built-in names are accepted too but not listed (there are thousands)."""
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        return []
    paths, _ = task_folders(folders)
    return sorted(_manager(tuple(str(p) for p in paths), False).all_tasks)


@functools.lru_cache(maxsize=4)
def _manager(paths: tuple[str, ...], defaults: bool):
    """lm-eval's task index over the folders (+ its built-in tasks when `defaults`): pure YAML indexing, kept
    for the process (the built-ins take ~10 s)."""
    from lm_eval.tasks import TaskManager
    return TaskManager(include_path=list(paths), include_defaults=defaults)


@functools.lru_cache(maxsize=1)
def _lm_class():
    from lm_eval.models.huggingface import HFLM

    class StudioLM(HFLM):
        """HFLM around the already-loaded model; its model info asks the hub for nothing."""

        def get_model_info(self) -> dict:
            return {"model_num_parameters": sum(p.numel() for p in self._model.parameters()),
                    "model_dtype": str(getattr(self._model, "dtype", ""))}

    return StudioLM


def run(ctx: EvalContext, progress: Progress | None, tasks: list[str], limit: int | None,
        folders: list[str] | str | None = None) -> SectionResult:
    """Every named lm-eval task for every variant of ctx (at most `limit` documents per task). A task that
    cannot be loaded (unknown name, a dataset only the hub has while it cannot be reached) is left out with one
    sentence in the notes; EvalError (those sentences) when none can be."""
    started = time.perf_counter()
    progress = progress or Progress()
    names = list(dict.fromkeys(t.strip() for t in tasks if t and t.strip()))
    if not names:
        raise EvalError("no benchmark named: give one or more lm-eval task names, e.g. studio_arith")
    try:
        import lm_eval
        from lm_eval.evaluator import simple_evaluate
    except ImportError:
        raise EvalError(_INSTALL) from None
    paths, notes = task_folders(folders)
    key = tuple(str(p) for p in paths)
    manager = _manager(key, False)
    if any(name not in manager.all_tasks and not _is_yaml(name) for name in names):
        progress.report("benchmarks: indexing lm-eval's built-in tasks")
        manager = _manager(key, True)

    progress.add_total(len(names) * (1 + len(ctx.variants)))
    loaded: dict[str, object] = {}
    problems: list[str] = []
    for name in names:
        progress.advance(1, f"benchmarks: loading {name}")
        if name not in manager.all_tasks and not _is_yaml(name):
            offline = sorted(_manager(key, False).all_tasks)
            shown = ", ".join(offline[:12]) + (", …" if len(offline) > 12 else "")
            problems.append(f"there is no lm-eval task named {name} in the studio's tasks, {_where(paths[1:])} or "
                            f"lm-eval's built-in tasks; check the name (tasks in the folders: {shown or 'none'})")
            progress.advance(len(ctx.variants))
            continue
        try:
            loaded[name] = _load(manager, name)
        except Exception as error:  # noqa: BLE001 - lm-eval and datasets raise many kinds; each gets its sentence
            problems.append(_load_problem(manager, name, error))
            progress.advance(len(ctx.variants))
    if not loaded:
        raise EvalError("; ".join(problems) if problems else "no benchmark could be loaded")

    results: dict[str, dict[str, dict]] = {}          # task -> variant key -> lm-eval's results dict
    for variant in ctx.variants:
        lm = None
        with variant.active() as model:
            lm = _lm_class()(pretrained=model, tokenizer=ctx.tokenizer, batch_size=max(1, int(ctx.batch_size)))
            for name, task in loaded.items():
                progress.report(f"benchmarks: {name} · {variant.key}")
                try:
                    output = simple_evaluate(model=lm, tasks=task if isinstance(task, list) else [task],
                                             task_manager=manager, limit=limit, bootstrap_iters=BOOTSTRAP_ITERS,
                                             log_samples=False,
                                             random_seed=ctx.seed, numpy_random_seed=ctx.seed,
                                             torch_random_seed=ctx.seed, fewshot_random_seed=ctx.seed)
                except Exception as error:  # noqa: BLE001 - one task's failure leaves the others
                    problems.append(f"benchmark {name} failed for {variant.key}: {_first_line(error)}")
                    output = None
                results.setdefault(name, {})[variant.key] = output or {}
                progress.advance(1, f"benchmarks: {name} · {variant.key} done")
        del lm

    section = SectionResult(SECTION, notes=problems + notes)
    for name in loaded:
        section.metrics.extend(_metrics(name, results[name], [v.key for v in ctx.variants]))
    if not section.metrics:
        raise EvalError("; ".join(problems) if problems else "the benchmarks produced no figure")
    limited = f"at most {limit} documents per task" if limit else "every document of each task"
    section.notes.append(f"lm-eval {getattr(lm_eval, '__version__', '')} on {limited}, the tasks' own prompts "
                         "without the chat template and their own few-shot settings (zero-shot unless a task "
                         "sets num_fewshot); the ± figures in each metric's help are lm-eval's standard errors")
    section.seconds = round(time.perf_counter() - started, 2)
    return section


# ------------------------------------------------------------------------------------------------ loading

def _is_yaml(name: str) -> bool:
    return name.endswith((".yaml", ".yml")) and Path(name).expanduser().is_file()


def _where(folders: list[Path]) -> str:
    return f"the task folders ({', '.join(str(p) for p in folders)})" if folders else \
        f"the task folders (none named: set {TASKS_ENV})"


def _load(manager, name: str):
    """The built task (or group, or list of tasks for a tag): datasets are loaded here, once for every variant.
    A task from a folder with a YAML goes in as its config, its relative data paths resolved against the YAML's
    folder."""
    spec = _spec(manager, name)
    built = manager.load([spec])
    if name in built.get("groups", {}):
        return built["groups"][name]
    tasks = built["tasks"]
    task_name = spec["task"] if isinstance(spec, dict) else name
    if task_name in tasks:
        return tasks[task_name]
    return list(tasks.values())


def _spec(manager, name: str):
    from lm_eval.tasks._index import Kind

    entry = manager.task_index.get(name)
    yaml_path = Path(name).expanduser() if _is_yaml(name) else (entry.yaml_path if entry else None)
    if yaml_path is None or (entry is not None and entry.kind is not Kind.TASK) or _builtin(yaml_path):
        return name
    config = _load_yaml(yaml_path)
    if not isinstance(config, dict) or "task" not in config or "class" in config:
        return name
    return _resolved(config, Path(yaml_path).resolve().parent)


def _builtin(path) -> bool:
    import lm_eval.tasks
    try:
        Path(path).resolve().relative_to(Path(lm_eval.tasks.__file__).resolve().parent)
        return True
    except ValueError:
        return False


def _load_yaml(path):
    try:
        from lm_eval.tasks._yaml_loader import load_yaml            # 0.4.10 and later
        return load_yaml(path, resolve_func=True)
    except ImportError:
        from lm_eval.utils import load_yaml_config                  # earlier 0.4.x
        return load_yaml_config(str(path), mode="full")


def _resolved(config: dict, folder: Path) -> dict:
    """The task config with a relative `data_files` (str, list or split -> str / list) and a relative
    `dataset_path` that names something next to the YAML turned into absolute paths."""
    config = dict(config)
    dataset_path = config.get("dataset_path")
    if isinstance(dataset_path, str) and dataset_path not in _LOCAL_BUILDERS and not Path(dataset_path).is_absolute() \
            and (folder / dataset_path).exists():
        config["dataset_path"] = str(folder / dataset_path)
    kwargs = dict(config.get("dataset_kwargs") or {})
    if "data_files" in kwargs:
        def absolute(value):
            if isinstance(value, str):
                return value if Path(value).is_absolute() or "://" in value else str(folder / value)
            if isinstance(value, (list, tuple)):
                return [absolute(v) for v in value]
            if isinstance(value, dict):
                return {k: absolute(v) for k, v in value.items()}
            return value
        kwargs["data_files"] = absolute(kwargs["data_files"])
        config["dataset_kwargs"] = kwargs
    return config


def _load_problem(manager, name: str, error: Exception) -> str:
    """One sentence for a task that could not be loaded: the hub one when its dataset must come from there."""
    if _needs_hub(error):
        dataset = _hub_dataset(error) or _dataset_path(manager, name)
        named = f"its dataset {dataset}" if dataset else "its dataset"
        return (f"benchmark {name} needs {named} from the Hugging Face hub, which this machine cannot reach; put the "
                "dataset in the Hugging Face cache (run the task once where the hub is reachable with the same "
                f"HF_HOME, then copy that cache here) or give a folder of your own tasks with local data ({TASKS_ENV})")
    return f"benchmark {name} could not be loaded: {_first_line(error)}"


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


_HUB_NAMES = {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout", "ReadTimeout",
              "DatasetNotFoundError", "MaxRetryError", "NewConnectionError", "TimeoutException"}
_HUB_TEXT = ("huggingface.co", "offline mode", "hf_hub_offline", "hf_datasets_offline", "couldn't reach",
             "connection error", "doesn't exist on the hub")


def _needs_hub(error: BaseException) -> bool:
    for item in _chain(error):
        names = {cls.__name__ for cls in type(item).__mro__}
        text = str(item).lower()
        if names & _HUB_NAMES or isinstance(item, ConnectionError) or any(t in text for t in _HUB_TEXT):
            return True
    return False


def _hub_dataset(error: BaseException) -> str | None:
    for item in _chain(error):
        found = re.search(r"huggingface\.co/(?:api/)?datasets/([\w.-]+(?:/[\w.-]+)?)", str(item))
        if found:
            return found.group(1)
        found = re.search(r"Dataset '([\w./-]+)' doesn't exist", str(item))
        if found:
            return found.group(1)
    return None


def _dataset_path(manager, name: str) -> str | None:
    entry = manager.task_index.get(name)
    if entry is None or entry.yaml_path is None:
        return None
    try:
        from lm_eval.tasks._yaml_loader import load_yaml
        value = load_yaml(entry.yaml_path, resolve_func=False).get("dataset_path")
    except Exception:  # noqa: BLE001 - only for the sentence
        return None
    return value if isinstance(value, str) else None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")


# ------------------------------------------------------------------------------------------------ figures

def _metrics(task: str, outputs: dict[str, dict], keys: list[str]) -> list[Metric]:
    """One Metric per (task or group, metric) lm-eval reported, first filter of each, values per variant."""
    reference = next((o for o in outputs.values() if o.get("results")), None)
    if reference is None:
        return []
    out = []
    for subject, figures in reference["results"].items():
        config = (reference.get("configs") or {}).get(subject) or {}
        wanted = [m.get("metric") for m in config.get("metric_list") or [] if isinstance(m.get("metric"), str)]
        found: dict[str, str] = {}                          # metric -> its "metric,filter" key (first filter)
        for key_name in figures:
            metric, _, flt = key_name.partition(",")
            if not flt or metric.endswith("_stderr") or metric == "alias" or metric in found:
                continue
            if not isinstance(figures[key_name], (int, float)) or isinstance(figures[key_name], bool):
                continue
            found[metric] = key_name
        order = [m for m in wanted if m in found] + [m for m in found if m not in wanted]
        samples = ((reference.get("n-samples") or {}).get(subject) or {}).get("effective")
        for metric in order:
            key_name = found[metric]
            metric_name, _, flt = key_name.partition(",")
            values, errors = {}, {}
            for variant in keys:
                result = ((outputs.get(variant) or {}).get("results") or {}).get(subject) or {}
                values[variant] = _finite(result.get(key_name))
                errors[variant] = _finite(result.get(f"{metric_name}_stderr,{flt}"))
            higher = ((reference.get("higher_is_better") or {}).get(subject) or {}).get(metric_name, True)
            name = f"{subject}/{metric_name}" + (f" ({flt})" if flt != "none" else "")
            stderr = ", ".join(f"{k} ±{v:.3g}" for k, v in errors.items() if v is not None)
            over = f" over {samples} documents" if samples else ""
            out.append(Metric(SECTION, name, f"{subject} · {metric_name}" + (f" ({flt})" if flt != "none" else ""),
                              bool(higher if higher is not None else True), values,
                              f"lm-eval task {subject}: {metric_name}{over}"
                              + (f"; standard error {stderr}" if stderr else ""), int(samples or 0)))
    return out


def _finite(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
