"""Loading what a report compares: the job's base once, its adapter, and a second job's adapter on the same base.

A job that is still running (or stopped) is evaluated on its newest complete checkpoint, and the report says so
(`AdapterSource.label`). The base variant is the same weights with the adapters disabled: no second copy.
"""
from __future__ import annotations

from backend.evaluate.common import EvalContext, EvalError, Variant

COMPARE = "compare"


def load_context(job_id: str, compare_job: str | None = None, settings=None, max_rows: int = 100,
                 batch_size: int = 8) -> EvalContext:
    from backend.models import adapters
    from backend.serve.chat import GenerationSettings

    try:
        source = adapters.adapter_source(job_id)
        sources = [source]
        if compare_job:
            if compare_job == job_id:
                raise EvalError(f"--compare names the same job {job_id}; pick another job to compare with")
            sources.append(adapters.adapter_source(compare_job))
        model = adapters.load_with_adapters(sources, ["adapter", COMPARE][:len(sources)])
    except adapters.AdapterError as error:
        raise EvalError(str(error)) from error
    tokenizer = adapters.load_tokenizer(source)
    variants = [Variant("base", "base (adapter off)", model, None),
                Variant("adapter", f"adapter · {source.label}", model, "adapter")]
    if compare_job:
        variants.append(Variant(COMPARE, f"{compare_job} · {sources[1].label}", model, COMPARE))
    return EvalContext(job_id=source.job_id, config=source.config, source=source, tokenizer=tokenizer, model=model,
                       variants=variants, settings=settings or GenerationSettings(), max_rows=max_rows,
                       batch_size=batch_size, seed=source.config.training.seed)
