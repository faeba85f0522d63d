"""Train tab handlers, without a browser: form <-> config, previews, presets, estimate, start."""
import yaml

from backend import jobs
from backend.config import JobConfig
from ui import train_tab


def test_form_round_trip_keeps_every_field():
    data = train_tab.load_preset("quickstart")
    values = train_tab.config_dict_to_form(data)
    assert len(values) == len(train_tab.FIELD_PATHS)
    back = train_tab.form_to_config_dict(values)
    assert JobConfig.from_dict(back).to_dict() == JobConfig.from_dict(data).to_dict()


def test_target_modules_text_becomes_a_list_and_template_placeholder_none():
    values = dict(zip(train_tab.FIELD_PATHS, train_tab.config_dict_to_form({})))
    values["lora.target_modules"] = "q_proj, v_proj"
    data = train_tab.form_to_config_dict(list(values.values()))
    assert data["lora"]["target_modules"] == ["q_proj", "v_proj"]
    assert data["chat_template"] is None
    assert JobConfig.from_dict(data).validate(cuda_available=False) == []


def test_every_control_has_help_text():
    from backend.config import field_help
    assert all(field_help(p) for p in train_tab.FIELD_PATHS)


def test_previews_show_yaml_and_the_equivalent_command():
    data = train_tab.load_preset("quickstart")
    data["training"]["max_steps"] = 7
    text, command, estimate = train_tab.previews(data, "quickstart")
    assert yaml.safe_load(text)["training"]["max_steps"] == 7
    assert command == "lorastudio train quickstart --set training.max_steps=7"
    assert "Memory estimate" in estimate and "data-verdict" in estimate


def test_estimate_grows_with_batch_and_qlora_shrinks_weights():
    from backend.models import estimate as estimate_draft
    small = JobConfig.from_dict({"training": {"batch_size": 1}})
    big = JobConfig.from_dict({"training": {"batch_size": 16}})
    q = JobConfig.from_dict({"method": "qlora", "training": {"batch_size": 1}})
    dims = dict(parameters=7_000_000_000)
    e_small, e_big, e_q = (estimate_draft.estimate(c, **dims) for c in (small, big, q))
    assert e_big.activations > e_small.activations and e_big.weights == e_small.weights
    assert e_q.weights < e_small.weights / 6
    device = estimate_draft.Device("tiny GPU", 4 * 1024 ** 3)
    assert estimate_draft.verdict(e_small.total, device) == "will not fit"
    assert estimate_draft.verdict(1024 ** 3, device) == "fits"
    assert estimate_draft.verdict(3.5 * 1024 ** 3, device) == "tight"


def test_save_preset_then_load_it(workspace):
    data = train_tab.load_preset("quickstart")
    data["lora"]["r"] = 8
    message = train_tab.save_preset("my-run", data)
    assert "my-run" in message and "my-run" in train_tab.preset_names()
    assert train_tab.load_preset("my-run")["lora"]["r"] == 8


def test_save_preset_refuses_bad_names_and_bundled_names():
    import pytest
    from ui.common import UserError
    for name in ("", "../x", "quickstart"):
        with pytest.raises(UserError):
            train_tab.save_preset(name, {})


def test_start_shows_every_problem_at_once_and_creates_nothing():
    data = train_tab.load_preset("quickstart")
    data["lora"]["r"] = 0
    data["training"]["learning_rate"] = -1
    data["dataset"] = "no-such-dataset"
    job_id, errors = train_tab.start_job(data)
    assert job_id is None
    joined = "\n".join(errors)
    assert "lora.r" in joined and "training.learning_rate" in joined and "dataset:" in joined
    assert jobs.list_jobs() == []
    assert "3 problem(s)" in train_tab.errors_markdown(errors)


def test_start_creates_and_enqueues_the_job():
    data = train_tab.load_preset("quickstart")
    data["training"]["max_steps"] = 3
    job_id, errors = train_tab.start_job(data)
    assert errors == [] and job_id
    job = jobs.get(job_id)
    assert job.status == "queued" and job.total_steps == 3
    from workers.queue import get_queue
    assert get_queue().huey.pending_count() == 1


def test_import_model_errors_are_one_sentence(tmp_path):
    import pytest
    with pytest.raises(Exception) as info:
        train_tab.import_model(str(tmp_path / "missing"))
    assert "does not exist" in str(info.value)


def test_loraplus_zero_means_off():
    values = dict(zip(train_tab.FIELD_PATHS, train_tab.config_dict_to_form({})))
    assert values["lora.loraplus_ratio"] == 0
    assert train_tab.form_to_config_dict(list(values.values()))["lora"]["loraplus_ratio"] is None
    values["lora.loraplus_ratio"] = 16
    assert train_tab.form_to_config_dict(list(values.values()))["lora"]["loraplus_ratio"] == 16


def test_a_saved_dataset_name_is_offered_shown_and_starts_a_job(tmp_path):
    import json

    from backend.data import register_upload
    from backend.jobs.summary import summarize
    from ui.common import dataset_choices

    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                                     {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                            for i in range(12)))
    dataset_id = register_upload(path, name="support-chats")
    other = tmp_path / "other.jsonl"
    other.write_text(path.read_text() + path.read_text())
    unnamed = register_upload(other)
    choices = dict((value, label) for label, value in dataset_choices())
    assert "support-chats" in choices and dataset_id not in choices      # the name is the value
    assert unnamed in choices and unnamed in choices[unnamed]            # an unnamed upload keeps its id
    data = train_tab.load_preset("quickstart")
    data["dataset"] = "support-chats"
    text, command, _ = train_tab.previews(data, "quickstart")
    assert yaml.safe_load(text)["dataset"] == "support-chats"
    assert "--set dataset=support-chats" in command and "ds-" not in command
    job_id, errors = train_tab.start_job(data)
    assert errors == [] and job_id
    job = jobs.get(job_id)
    assert job.dataset == "support-chats"
    assert summarize(job).dataset_name == "support-chats"


def test_mix_is_one_text_box_of_datasets_and_shares():
    data = train_tab.load_preset("replay-mix")
    values = dict(zip(train_tab.FIELD_PATHS, train_tab.config_dict_to_form(data)))
    assert values["mix"] == "replay: 0.1"
    values["mix"] = "replay: 0.1, colour-demo: 0.05"
    back = train_tab.form_to_config_dict(list(values.values()))
    assert back["mix"] == {"replay": 0.1, "colour-demo": 0.05}
    assert JobConfig.from_dict(back).validate(cuda_available=False) == []
    command = train_tab.train_command(back, "replay-mix")
    assert command == """lorastudio train replay-mix --set 'mix={"replay": 0.1, "colour-demo": 0.05}'"""
    values["mix"] = "ten percent replay"
    problems = JobConfig.from_dict(train_tab.form_to_config_dict(list(values.values()))).validate(cuda_available=False)
    assert problems == ["mix: expected datasets with their shares, e.g. {replay: 0.1} for 10 % of the training rows"]
    values["mix"] = ""
    assert train_tab.form_to_config_dict(list(values.values()))["mix"] == {}


def test_every_method_starts_from_the_form_with_its_estimate_and_command(bundled_model_dir, workspace):
    """Picking each method in the Train tab's form gives a valid job: no problems, a memory estimate, the equivalent
    command names the method, and Start queues it (the training itself: bench/sweep.py and the stage tests)."""
    from backend.models import methods

    index = train_tab.FIELD_PATHS.index("method")
    for method in methods.METHODS:
        values = train_tab.config_dict_to_form(train_tab.load_preset("quickstart"))
        values[index] = str(method)
        data = train_tab.form_to_config_dict(values)
        _, command, estimate = train_tab.previews(data, "quickstart")
        named = method == "lora" or f"method={method}" in command      # the command lists changes to the preset
        assert named and "Memory estimate:" in estimate and "unavailable" not in estimate, (method, command, estimate)
        job_id, errors = train_tab.start_job(data)
        assert errors == [] and jobs.get(job_id).config.method == method, (method, errors)
