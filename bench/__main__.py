"""Run the benchmarks and publish their tables in bench/RESULTS.md.

    python -m bench [NAME ...] [--quick] [--arg NAME=VALUE ...] [--results PATH] [--tiny MODEL_DIR] [--list]

Runs the named benchmarks (default: all, in the order below) one after another in this process (each measures
its own arms side by side) and rewrites RESULTS.md: a header (date, machine, versions) and one section per
benchmark, each stating the settings that produced it. Running a subset replaces only those sections, so a
benchmark can be refreshed on its own. `--quick` uses small step counts (the whole suite in minutes; noisier);
`--tiny MODEL_DIR` runs on a tiny model folder with the smallest settings (for tests). A benchmark whose module is
missing (being written) is skipped with a note; one that fails leaves its old section with a note on top.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import inspect
import io
import platform
import re
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"

# name -> (what it measures, full settings, --quick settings); settings are keyword arguments of the module's
# main(), passed only where main() accepts them (ui.main takes an argv list).
BENCHMARKS = {
    "overhead": ("studio SFT stage vs a plain TRL script", {}, {"steps": 8, "rounds": 1}),
    "queue": ("time the queue adds; callback cost per step", {}, {"rounds": 1}),
    "data": ("dataset validation and tokenisation speed", {}, {"rows": 20_000, "tokenize_rows": 2_000}),
    "load": ("20 pages refreshing the Jobs tab of a real app while a job trains", {}, {"quick": True}),
    "ui": ("UI refresh latency, idle and while training", {"argv": []},
           {"argv": ["--repeats", "10", "--data-repeats", "2", "--jobs", "10", "--rows", "2000"]}),
    "alignment": ("DPO vs SFT step time and memory", {}, {"steps": 6, "rounds": 1}),
    "padding": ("padding efficiency and tokens/s per batching option", {},
                {"demo": 8, "synthetic": 8, "rounds": 1, "efficiency_rows": 1000}),
    "estimator": ("memory estimate vs measured peak", {}, {"lengths": (256,)}),
    "methods": ("LoRA / QLoRA / DoRA / PiSSA tokens/s and memory vs LoRA", {}, {"steps": 3, "rounds": 1}),
    "playground": ("playground and export", {}, {"quick": True}),
    "serve": ("many adapters on one base: mixed batches vs base, one at a time, merged; swaps; API = playground", {},
              {"quick": True}),
    "compose": ("two adapters, one fact each, composed: does the composition answer both?", {}, {"quick": True}),
    "claims": ("what the seeds and papers claim per method, side by side on a task checked by exact match", {},
               {"steps": 20, "arms": ("lora", "dora", "pissa", "lora+", "lora r=128", "rslora r=128", "vera", "qlora",
                                      "adalora")}),
    "sweep": ("every method through the CLI: train, base / adapter / merged answers, plain-peft reload, merged GGUF "
              "in llama.cpp", {}, {"steps": 3}),
    "gguf": ("GGUF export size, time and peak memory", {"argv": ["--verify"]}, {"argv": ["--rounds", "1"]}),
    "llamacpp": ("GGUF types in llama.cpp: size, top-1 agreement, the export's check, speed vs transformers", {},
                 {"argv": ["--prompts", "3", "--new-tokens", "32"]}),
    "evaluate": ("quality report: batched vs one-at-a-time generation, the task section", {}, {"quick": True}),
    "reliability": ("kills, restarts, several workers, a full disk, a killed export: what held", {},
                    {"only": ("group", "trainer", "save-weights", "save-marker-group", "app", "preempt", "sqlite-3",
                              "redis-2", "frozen", "hung", "export-zip", "group-pid1", "disk-full")}),
    "suite": ("the test suite's own time from a fresh clone: whole (CI's command) and fast tier", {},
              {"fast_only": True}),
}
TINY = {  # the smallest settings, with the model replaced by --tiny MODEL_DIR
    "overhead": {"steps": 2, "rounds": 1, "batch": 2}, "queue": {"rounds": 1, "steps": 2},
    "alignment": {"steps": 3, "rounds": 1, "batch": 2},
    "padding": {"demo": 6, "synthetic": 6, "rounds": 1, "batch": 2, "max_length": 128, "efficiency_rows": 50},
    "estimator": {"lengths": (64,), "batch": 2, "steps": 2, "methods": ("lora",)},
    "methods": {"length": 64, "batch": 2, "steps": 2, "rounds": 1, "methods": ("lora", "dora")},
    "playground": {"quick": True}, "gguf": {"argv": ["--rounds", "1"]}, "reliability": {"only": ("trainer",)},
    "serve": {"quick": True}, "compose": {"quick": True},
    "claims": {"steps": 3, "batch": 2, "arms": ("lora", "vera", "adalora")},
    "sweep": {"steps": 2, "methods": ("lora", "prompt_tuning"), "gguf": "f16"},
    "llamacpp": {"argv": ["--prompts", "2", "--new-tokens", "8", "--types", "q4_k_m"]},
    "load": {"clients": 3, "window": 3.0, "jobs": 3},
    "evaluate": {"rows": 6, "max_new_tokens": 4, "batch_sizes": (1, 4), "steps": 2, "report_rows": 3},
}


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    parts = []
    for package in ("torch", "transformers", "peft", "trl", "bitsandbytes"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts) + f", python {platform.python_version()}"


def run_one(name: str, settings: dict) -> str:
    """The benchmark's Markdown (its returned text, its dict through markdown(), or what it printed)."""
    module = importlib.import_module(f"bench.{name}")
    accepted = inspect.signature(module.main).parameters
    kwargs = {k: v for k, v in settings.items() if k in accepted}
    if "argv" in accepted:  # an argparse main: never let it read this runner's command line
        kwargs.setdefault("argv", [])
        if "model" in settings and "argv" in settings and name in ("gguf", "llamacpp"):
            kwargs["argv"] = kwargs["argv"] + ["--model", str(settings["model"])]
    captured = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, captured)):
        result = module.main(**kwargs)
    if isinstance(result, dict) and hasattr(module, "markdown"):
        return module.markdown(result)
    return result if isinstance(result, str) else captured.getvalue()


def section(name: str, body: str, settings: dict, mode: str) -> str:
    shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "module defaults"
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"<!-- bench:{name} -->\n## {name}: {BENCHMARKS.get(name, ('',))[0]}\n\n"
            f"_{when} · `python -m bench {name}{' --quick' if mode == 'quick' else ''}` · settings: {shown}_\n\n"
            f"{body.strip()}\n<!-- /bench:{name} -->\n")


def read_sections(text: str) -> dict[str, str]:
    """Each section with the hand-written notes that follow it (up to the next section), so that a rerun keeps
    them (see notes_after)."""
    pattern = re.compile(r"<!-- bench:(\w+) -->\n.*?<!-- /bench:\1 -->\n(?:(?!<!-- bench:).)*", re.S)
    return {m.group(1): m.group(0) for m in pattern.finditer(text)}


def notes_after(old: str | None, name: str) -> str:
    """The hand-written text after a section's end marker, kept when the section is measured again."""
    notes = old.split(f"<!-- /bench:{name} -->\n", 1)[1] if old else ""
    return notes.rstrip("\n") + "\n" if notes.strip() else ""     # the blank line between sections is not a note


def write_results(path: Path, sections: dict[str, str]) -> None:
    from bench.common import machine_line
    order = list(BENCHMARKS) + sorted(set(sections) - set(BENCHMARKS))
    header = (f"# LoRA Studio benchmarks\n\nWritten by `python -m bench` (see bench/__main__.py); each section says "
              f"when and with which settings it was measured. Last run: {machine_line()}; {versions()}.\n"
              "Timings are medians of arms run side by side in one process; compare ratios more than absolute "
              "numbers (these machines are shared and noisy).\n\n")
    # each section ends in exactly one newline: the trailing blank lines read_sections keeps with an unmeasured
    # section must not pile up, one more per run
    path.write_text(header + "\n".join(sections[n].rstrip("\n") + "\n" for n in order if n in sections),
                    encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="small step counts: the whole suite in minutes")
    parser.add_argument("--tiny", metavar="MODEL_DIR", help="a tiny model folder and the smallest settings (tests)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the Markdown file to update")
    parser.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                        help="override one setting of main() (a Python literal or text), e.g. steps=4")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, (what, _, _) in BENCHMARKS.items():
            print(f"{name:10} {what}")
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    sections = read_sections(args.results.read_text(encoding="utf-8")) if args.results.is_file() else {}
    failed = 0
    for name in args.names or list(BENCHMARKS):
        mode = "tiny" if args.tiny else "quick" if args.quick else "full"
        settings = ({**TINY.get(name, {}), "model": args.tiny} if args.tiny
                    else BENCHMARKS[name][2] if args.quick else BENCHMARKS[name][1])
        settings = {**settings, **_overrides(args.arg)}
        print(f"== bench {name} ({mode})", file=sys.stderr, flush=True)
        if importlib.util.find_spec(f"bench.{name}") is None:
            print(f"   skipped: bench/{name}.py is not there yet", file=sys.stderr)
            continue
        try:
            body = run_one(name, settings)
        except Exception:  # noqa: BLE001 - one broken benchmark must not lose the others' results
            failed += 1
            note = traceback.format_exc(limit=3).strip().splitlines()[-1]
            print(f"   FAILED: {note}", file=sys.stderr)
            old = sections.get(name)
            if old:
                sections[name] = old.replace(f"<!-- bench:{name} -->\n",
                                             f"<!-- bench:{name} -->\n> last refresh failed: {note}\n\n", 1)
            continue
        sections[name] = section(name, body, settings, mode) + notes_after(sections.get(name), name)
        write_results(args.results, sections)  # after each benchmark: a later failure keeps this one
    write_results(args.results, sections)
    print(f"wrote {args.results}", file=sys.stderr)
    return 1 if failed else 0


def _overrides(items: list[str]) -> dict:
    import ast
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()


if __name__ == "__main__":
    sys.exit(main())
