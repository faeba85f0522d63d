"""Compose: the two-fact demo of issue 18 on the bundled model. Does a composition of two adapters answer both
questions that each parent alone answers?

    python -m bench compose [--quick]

Trains the presets compose-demo-name (identity-demo: "I am Nova") and compose-demo-colour (colour-demo: "my
favourite colour is teal") as real jobs, composes them with several of peft's combination types (equal weights
1 and 1; ties with density 0.5), asks the base, each parent and each composition both questions (greedy, the
playground's code), and scores each parent's held-out rows with the parent and the `cat` composition
(backend/adapters/skills.py). Nothing here is asserted; the table says what happened.
"""
from __future__ import annotations

import time

QUESTIONS = {"name": ("What is your name?", "nova"), "colour": ("What is your favourite colour?", "teal")}
TYPES = (("cat", None), ("linear", None), ("svd", None), ("ties", 0.5))


def _train(preset: str, model: str | None, steps: int | None) -> str:
    from dataclasses import replace

    from backend import jobs
    from backend.jobs import presets, runner

    config = presets.load(preset)
    if model:
        config = replace(config, model=model)
    if steps:
        config = replace(config, training=replace(config.training, max_steps=steps))
    job = jobs.create(config, status="running")
    finished = runner.run_job(job.id)
    if finished.status != "completed":
        raise RuntimeError(f"{preset} did not finish: {finished.reason}")
    return job.id


def _answers(job_id: str | None, base_job: str, new_tokens: int) -> dict:
    from backend.models import adapters
    from backend.serve.chat import answer

    source = adapters.adapter_source(job_id or base_job)
    model = adapters.load_with_adapters([source])
    tokenizer = adapters.load_tokenizer(source)
    return {key: answer(model, tokenizer, [{"role": "user", "content": question}], new_tokens,
                        use_adapter=job_id is not None)
            for key, (question, _) in QUESTIONS.items()}


def main(quick: bool = False, model: str | None = None) -> str:
    from bench.common import machine_line, markdown_table, scratch_workspace

    new_tokens = 6 if model else 24
    steps = 3 if model else None
    types = TYPES[:1] if quick or model else TYPES
    with scratch_workspace():
        from backend import data, models
        from backend.adapters.compose import Composition, compose
        from backend.adapters.skills import kept_skills

        data.ensure_demo_datasets()
        model_name = models.import_model(model, name="bench-model").name if model else None
        started = time.perf_counter()
        name_job, colour_job = _train("compose-demo-name", model_name, steps), _train("compose-demo-colour",
                                                                                    model_name, steps)
        train_s = time.perf_counter() - started
        variants = [("base", None), ("parent: name", name_job), ("parent: colour", colour_job)]
        for combination, density in types:
            entry = compose(Composition((name_job, colour_job), (1.0, 1.0), combination, density))
            variants.append((f"composed: {combination}" + (f" (density {density:g})" if density else "")
                             + f", rank {entry.rank}", entry.id))
            if combination == "cat":
                cat_id = entry.id
        rows = []
        for label, job_id in variants:
            said = _answers(job_id, name_job, new_tokens)
            knows = [key for key, (_, fact) in QUESTIONS.items() if fact in said[key].lower()]
            rows.append([label, said["name"].replace("|", "/")[:70], said["colour"].replace("|", "/")[:70],
                         ", ".join(knows) or "neither"])
        skills = kept_skills(cat_id, max_rows=4 if model else 8)
    skill_rows = [[s.parent == name_job and "name (identity-demo)" or "colour (colour-demo)", s.rows,
                   *(f"{s.loss.get(k, float('nan')):.3f}" for k in ("base", "parent", "composed")),
                   *(f"{100 * s.exact_match[k]:.0f} %" if k in s.exact_match else "-" for k in ("parent", "composed"))]
                  for s in skills]
    both = [r[0] for r in rows if r[3] == "name, colour"]
    verdict = (f"Compositions that answered both questions: {', '.join(both)}." if both else
               "No composition answered both questions with its parents' facts.")
    text = "\n".join([
        machine_line(), "",
        f"Parents trained in {train_s:.0f} s (presets compose-demo-name and compose-demo-colour"
        f"{', ' + str(steps) + ' steps' if steps else ''}); greedy answers, {new_tokens} new tokens.", "",
        markdown_table(["variant", "What is your name?", "What is your favourite colour?", "knows"], rows), "",
        "Each parent's own held-out rows, scored with the parent and the `cat` composition:", "",
        markdown_table(["parent's rows", "rows", "loss base", "loss parent", "loss composed", "exact parent",
                        "exact composed"], skill_rows), "", verdict])
    print(text)
    return text


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    main(quick=parser.parse_args().quick)
