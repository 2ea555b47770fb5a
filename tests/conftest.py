import sys

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_terminal_summary(terminalreporter):
    """Case counts of the fuzz suite (tests/test_fuzz.py), printed whatever the verbosity."""
    fuzz = sys.modules.get("fuzzcases")
    if fuzz is not None and fuzz.COUNTS:
        terminalreporter.write_sep("-", "fuzz cases (tests/fuzzcases.py)")
        terminalreporter.write_line(fuzz.report())


# The fast lane, `pytest -m "not slow"` (under a minute on an idle core), leaves out whole-program
# runs: the command line end to end, torchrun, the C compiler, the fuzz suite, kill-and-resume, and
# anything that trains for more than a moment. CI runs everything.
SLOW_FILES = {
    "test_ablation.py",
    "test_anymodel_cli.py",
    "test_cexport.py",
    "test_dist.py",
    "test_errors.py",
    "test_fuzz.py",
    "test_hostile_cli.py",
    "test_outputs.py",
    "test_readme_usermodel.py",
    "test_resume.py",
    "test_usermodel_cli.py",
    "test_your_models.py",
}
SLOW_TESTS = {
    "test_inference_benchmark_smoke_run",
    "test_onnx_of_a_custom_network_runs_in_onnxruntime",
    "test_onnx_export_errors_are_one_line",
    "test_plots_draw_every_sweep",
    "test_sweep_command_resumes_without_recomputing",
    "test_a_language_model_from_its_checkpoint_in_bits_per_byte",
    "test_a_subject_without_a_test_split_is_measured_and_plotted_on_validation",
    "test_module_entry_point",
    "test_reproduce_writes_a_file_and_figures_that_agree",
    "test_reproduce_is_byte_for_byte_reproducible",
    "test_training_choices_can_be_turned_off_from_the_command_line",
    "test_train_then_compress_from_the_checkpoint",
    "test_an_interrupted_run_resumes_to_the_same_result",
    "test_cli_trains_then_reports_json_and_a_plot",
    "test_cli_on_a_training_checkpoint",
    "test_ruff_check_is_clean",
    "test_ruff_format_is_clean",
}


def pytest_collection_modifyitems(items):
    for item in items:
        if item.path.name in SLOW_FILES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)
