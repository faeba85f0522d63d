"""`python -m bench` runs the chosen benchmarks and rewrites RESULTS.md section by section."""
import bench.__main__ as runner


def test_runner_writes_a_results_file_on_a_tiny_model(tiny_model_dir, tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    assert runner.main(["padding", "--tiny", str(tiny_model_dir), "--results", str(results)]) == 0
    text = results.read_text()
    assert text.startswith("# LoRA Studio benchmarks") and "torch " in text and "transformers " in text
    assert "<!-- bench:padding -->" in text and "| padding_free" in text and "settings: demo=6" in text


def test_a_subset_replaces_only_its_sections(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    runner.write_results(results, {"queue": runner.section("queue", "old queue table", {}, "full"),
                                   "data": runner.section("data", "old data table", {}, "full")})
    monkeypatch.setattr(runner, "run_one", lambda name, settings: f"new {name} table")
    assert runner.main(["data", "--results", str(results), "--quick"]) == 0
    text = results.read_text()
    assert "old queue table" in text and "new data table" in text and "old data table" not in text
    assert text.index("bench:queue") < text.index("bench:data")     # the suite's order is kept
    assert "--quick" in text


def test_a_missing_module_is_skipped_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(runner.BENCHMARKS, "notyet", ("a benchmark being written", {}, {}))
    assert runner.main(["notyet", "--results", str(tmp_path / "R.md")]) == 0
    assert "skipped" in capsys.readouterr().err


def test_hand_written_notes_after_a_section_survive_its_rerun(tmp_path, monkeypatch):
    results = tmp_path / "RESULTS.md"
    runner.write_results(results, {"queue": runner.section("queue", "old queue table", {}, "full")
                                   + "### A note measured by hand\n\nkept.\n\n"})
    monkeypatch.setattr(runner, "run_one", lambda name, settings: f"new {name} table")
    assert runner.main(["queue", "--results", str(results)]) == 0
    text = results.read_text()
    assert "new queue table" in text and "old queue table" not in text
    assert text.index("<!-- /bench:queue -->") < text.index("### A note measured by hand\n\nkept.")
