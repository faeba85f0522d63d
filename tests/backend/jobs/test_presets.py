"""backend.jobs.presets: bundled and user presets, one resolution order (bundled first) for the CLI and the UI."""
import pytest

from backend import workspace
from backend.jobs import presets


def test_bundled_presets_are_listed_and_resolve_by_name_or_file(tmp_path):
    assert "quickstart" in presets.names()
    assert presets.resolve("quickstart") == workspace.PRESETS_DIR / "quickstart.yaml"
    assert presets.resolve("quickstart.yaml") == workspace.PRESETS_DIR / "quickstart.yaml"
    own = tmp_path / "mine.yaml"
    own.write_text("model: smollm2-135m-instruct\n")
    assert presets.resolve(str(own)) == own
    assert presets.load("quickstart").training.max_steps == 40


def test_unknown_names_are_one_sentence_with_the_choices():
    with pytest.raises(FileNotFoundError, match=r"config 'nope' is neither a file nor a preset; presets: .*quickstart"):
        presets.resolve("nope")
    with pytest.raises(presets.PresetError, match=r"no preset named 'nope'; pick one of .*quickstart"):
        presets.load("nope")


def test_save_then_find_it_from_both_edges():
    data = presets.load("quickstart").to_dict()
    data["lora"]["r"] = 8
    path = presets.save("  my-run ", data)
    assert path == workspace.user_presets_dir() / "my-run.yaml"
    assert path.read_text().startswith(presets.SAVED_HEADER)
    assert presets.names()[-1] == "my-run" and presets.resolve("my-run") == path
    assert presets.load("my-run").lora.r == 8


def test_save_refuses_bad_and_bundled_names():
    with pytest.raises(presets.PresetError, match="preset name: use letters"):
        presets.save("../x", {})
    with pytest.raises(presets.PresetError, match="'quickstart' is a bundled preset; choose another name"):
        presets.save("quickstart", {})


def test_bundled_wins_over_a_user_file_of_the_same_name():
    (workspace.user_presets_dir() / "quickstart.yaml").write_text("model: elsewhere\n")
    assert presets.resolve("quickstart") == workspace.PRESETS_DIR / "quickstart.yaml"
    assert presets.load("quickstart").model == "smollm2-135m-instruct"
    assert presets.names().count("quickstart") == 1


def test_a_broken_preset_says_what_is_wrong():
    (workspace.user_presets_dir() / "broken.yaml").write_text("training: {batchsize: 4}\n")
    with pytest.raises(presets.PresetError, match="preset broken has problems: .*batchsize"):
        presets.load("broken")
