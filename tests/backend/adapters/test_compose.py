"""Composing adapters: each combination type gives what peft's own add_weighted_adapter gives for the same
parents (computed here independently with plain peft), the result reloads with plain peft, its lineage is
recorded, it is a first-class adapter (answers through the playground's code), and what cannot be composed gets
one sentence."""
from __future__ import annotations

import pytest
import torch

from backend import adapters as registry
from backend.adapters.compose import COMBINATIONS, Composition, check, compose
from backend.models import adapters as model_adapters
from tests.backend.conftest import finished_job


@pytest.fixture(scope="module")
def two_parents(tmp_path_factory, tiny_model_dir):
    """A workspace with two tiny LoRA jobs (rank 4, different seeds), one of rank 8 and one DoRA job."""
    from backend import models
    home = tmp_path_factory.mktemp("compose-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORASTUDIO_HOME", str(home))
        base = models.import_model(tiny_model_dir, name="tiny-llama").name
        made = {"base": base, "a": finished_job(base, seed=1), "b": finished_job(base, seed=2),
                "r8": finished_job(base, r=8, seed=3), "dora": finished_job(base, method="dora", seed=4)}
        yield made, patch.setenv, home


@pytest.fixture
def parents(two_parents, monkeypatch):
    made, _, home = two_parents
    monkeypatch.setenv("LORASTUDIO_HOME", str(home))
    return made


def _peft_own(made, spec: Composition) -> dict:
    """The same composition with plain peft, not through the studio."""
    from peft import PeftModel
    from backend import models
    base = models.load_model(made["base"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(registry.get(spec.parents[0]).path), adapter_name="p0")
    for i, parent in enumerate(spec.parents[1:], 1):
        model.load_adapter(str(registry.get(parent).path), adapter_name=f"p{i}")
    torch.manual_seed(spec.seed)
    extra = {"density": spec.density or 0.5} if COMBINATIONS[spec.combination][1] else {}
    model.add_weighted_adapter([f"p{i}" for i in range(len(spec.parents))], list(spec.weights), "mine",
                               combination_type=spec.combination, **extra)
    return {k.replace(".mine", ""): v.clone() for k, v in model.state_dict().items() if ".mine." in k}


def _reloaded(made, entry) -> dict:
    from peft import PeftModel
    from backend import models
    model = PeftModel.from_pretrained(models.load_model(made["base"], dtype=torch.float32), str(entry.path))
    return {k.replace(".default", ""): v for k, v in model.state_dict().items() if ".default." in k}


@pytest.mark.parametrize("combination", list(COMBINATIONS))
def test_each_combination_equals_peft_own_and_reloads_with_plain_peft(parents, combination):
    spec = Composition(parents=(parents["a"], parents["b"]), weights=(0.7, 0.5), combination=combination,
                       density=0.6 if COMBINATIONS[combination][1] else None, seed=3)
    entry = compose(spec)
    expected, saved = _peft_own(parents, spec), _reloaded(parents, entry)
    assert expected and set(saved) == set(expected)
    for name, tensor in expected.items():
        assert torch.allclose(saved[name], tensor, atol=1e-6), name
    assert entry.origin == "composed" and [p["id"] for p in entry.parents] == [parents["a"], parents["b"]]
    assert [p["weight"] for p in entry.parents] == [0.7, 0.5] and entry.combination["type"] == combination
    assert f"compose {combination}" in entry.lineage[-1] and parents["a"] in entry.lineage[-1]
    card = (entry.path.parent / "card.md").read_text()
    assert "composed" in card and parents["b"] in card


def test_a_composed_adapter_is_first_class_and_its_parents_know_it(parents):
    from backend.models import adapters as loading
    from backend.serve.chat import answer
    entry = compose(Composition(parents=(parents["a"], parents["b"]), weights=(1.0, 1.0), combination="cat",
                                name="a and b"))
    assert entry.name == "a and b" and entry.rank == 8, "cat: the ranks add up"
    source = model_adapters.adapter_source(entry.id)     # what the Playground, exports and the API take
    model = loading.load_with_adapters([source])
    assert isinstance(answer(model, loading.load_tokenizer(source), [{"role": "user", "content": "Hi"}], 4), str)
    assert entry.id in [e.id for e in registry.entries(origin="composed")]
    assert f"{entry.id} (composed of it)" in registry.dependents(parents["a"])
    assert "delete anyway with --force" in registry.delete_problem(parents["a"])


def test_what_cannot_be_composed_gets_one_sentence(parents, tiny_model_dir):
    a, b = parents["a"], parents["b"]
    cases = [
        (Composition((a,), (1.0,)), "at least two adapters"),
        (Composition((a, a), (1.0, 1.0)), "named twice"),
        (Composition((a, b), (1.0,)), "2 adapters need 2 weights"),
        (Composition((a, b), (1.0, 1.0), "blend"), "is not one of linear, cat"),
        (Composition((a, b), (1.0, 1.0), "linear", density=0.5), "density applies to ties"),
        (Composition((a, b), (1.0, 1.0), "ties", density=1.5), r"from 0 \(exclusive\) to 1"),
        (Composition((a, parents["r8"]), (1.0, 1.0), "ties"), "needs equal ranks.*use cat or svd"),
        (Composition((a, parents["dora"]), (1.0, 1.0), "cat"), "is DoRA"),
        (Composition((a, "no-such-job"), (1.0, 1.0)), "no adapter 'no-such-job'"),
    ]
    for spec, sentence in cases:
        with pytest.raises(registry.RegistryError, match=sentence):
            check(spec)
    assert len(check(Composition((a, parents["r8"]), (0.5, 0.5), "svd"))) == 2, "svd takes any ranks"


def test_the_parents_skills_are_scored_with_the_composition(parents):
    from backend.adapters.skills import kept_skills, saved_skills
    entry = compose(Composition(parents=(parents["a"], parents["b"]), weights=(1.0, 1.0), combination="cat"))
    skills = kept_skills(entry.id, max_rows=4)
    assert [s.parent for s in skills] == [parents["a"], parents["b"]]
    for skill in skills:
        assert skill.dataset and skill.rows == 4
        assert set(skill.loss) == {"base", "parent", "composed"} and all(v > 0 for v in skill.loss.values())
        assert set(skill.exact_match) == {"base", "parent", "composed"}
        assert skill.loss["parent"] < skill.loss["base"], "the parent learnt its own rows"
    assert [s.loss for s in saved_skills(entry.id)] == [s.loss for s in skills]
    with pytest.raises(registry.RegistryError, match="not a composition"):
        kept_skills(parents["a"])


def test_a_composed_adapter_exports_merged_with_the_merge_check(parents):
    from backend.export import export_job
    entry = compose(Composition(parents=(parents["a"], parents["b"]), weights=(0.5, 0.5), combination="linear"))
    result = export_job(entry.id, kind="merged", dtype="float32")
    assert result.check is not None and result.check.ok, result.check.summary()
    assert result.zip_path.is_file()
