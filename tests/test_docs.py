"""The docs stay true to the repository: the recipe reference matches config/schema.yaml, every relative link in
README.md, docs/*.md and the other folders' README.md points at a file that exists (and, for `#anchor`s into Markdown,
at a heading it has), and every row of docs/bad-input.md names tests that exist. Plain file reading: no torch, no
workflow; runs in well under a second."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("recipe_reference", REPO / "tools" / "recipe_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_reference_matches_the_schema():
    generator = load_generator()
    committed = (REPO / "docs" / "recipe-reference.md").read_text()
    assert committed == generator.render(REPO / "config" / "schema.yaml"), (
        f"docs/recipe-reference.md is out of date with config/schema.yaml: regenerate it with `{generator.COMMAND}`")


FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def prose(text: str) -> str:
    """The Markdown without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation other than - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(markdown: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", markdown.read_text())):
        slug = anchor(heading)
        out.add(f"{slug}-{seen[slug]}" if slug in seen else slug)   # GitHub numbers repeats: x, x-1, x-2
        seen[slug] = seen.get(slug, 0) + 1
    return out


def broken_links(markdown: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(markdown.read_text())):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):   # https:, mailto: ...
            continue
        path, _, fragment = target.partition("#")
        resolved = (markdown.parent / path).resolve() if path else markdown
        if not resolved.exists():
            problems.append(f"{markdown.relative_to(REPO)}: {target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{markdown.relative_to(REPO)}: {target}: no heading #{fragment} in {resolved.name}")
    return problems


def documents() -> list[Path]:
    return [REPO / "README.md", *(REPO / folder / "README.md" for folder in ("bench", "data", "outputs")),
            *sorted((REPO / "docs").glob("*.md"))]


def test_every_relative_link_resolves():
    assert len(documents()) > 3
    problems = [problem for markdown in documents() for problem in broken_links(markdown)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_every_docs_page_is_in_the_index():
    index = (REPO / "docs" / "README.md").read_text()
    missing = [page.name for page in (REPO / "docs").glob("*.md") if page.name != "README.md" and
               f"]({page.name})" not in index]
    assert not missing, f"docs/README.md does not link: {missing}"


def test_the_anchor_rule():
    assert anchor("Competing: K-fold, ensembles, calibrated probabilities") == \
        "competing-k-fold-ensembles-calibrated-probabilities"
    assert anchor("The test suite's threads (2026-12-02, 00:10 UTC)") == "the-test-suites-threads-2026-12-02-0010-utc"
    assert anchor("What matches fastai 0.7, and where we differ on purpose") == \
        "what-matches-fastai-07-and-where-we-differ-on-purpose"
    assert anchor("`snapshots` and train_bn") == "snapshots-and-train_bn"


def test_the_link_check_finds_what_is_broken(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "REPO", tmp_path)
    (tmp_path / "other.md").write_text("# A heading\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("[ok](other.md#a-heading) [ok](other.md#twice-1) [ok](#here) [web](https://example.org/x.md)\n"
                    "`[not a link](missing.md)`\n```\n[nor this](missing.md)\n```\n# Here\n"
                    "[gone](missing.md) [no anchor](other.md#nowhere) [none here](#nowhere)\n")
    assert broken_links(page) == ["page.md: missing.md: no such file",
                                  "page.md: other.md#nowhere: no heading #nowhere in other.md",
                                  "page.md: #nowhere: no heading #nowhere in page.md"]


# Each row of docs/bad-input.md's table (by the start of its first cell) and the tests that exercise it.
BAD_INPUT_TESTS = {
    "a zero-byte image that a stage reads": [
        "test_recipe_checks.py::test_zero_byte_images_stop_planning_listing_them_and_saying_what_to_do",
        "test_recipe_fuzz.py::test_every_fragment_is_used_or_refused_naming_its_key",
    ],
    "truncated JPEG": [
        "test_bad_input.py::test_by_default_the_stats_stage_fails_listing_every_bad_file",
        "test_bad_input.py::test_with_skip_bad_images_are_listed_left_out_of_the_split_and_kept_in_test",
    ],
    "an undecodable **test** image": [
        "test_bad_input.py::test_an_unreadable_test_image_gets_the_training_class_prior",
    ],
    "PNG saved as `.jpg`": [
        "test_bad_input.py::test_png_saved_as_jpg_just_works",
        "test_bad_input.py::test_cmyk_jpeg_is_converted_to_rgb",
        "test_bad_input.py::test_exif_rotated_jpeg_is_upright_in_every_stage",
    ],
    "a label row whose image is missing": [
        "test_bad_input.py::test_bad_labels_are_errors_naming_the_row",
        "test_split.py::test_ids_that_could_escape_the_data_folder_are_refused_with_their_row",
    ],
    "a label that reads as a missing value": [
        "test_recipe_checks.py::test_a_label_that_reads_as_a_missing_value_stops_planning_naming_its_line",
        "test_split.py::test_a_label_reading_nan_is_a_class_only_among_the_sample_submissions",
    ],
    "an image in `train/` with no label": [
        "test_bad_input.py::test_an_image_without_a_label_is_a_logged_skip",
    ],
    "a class with too few images": [
        "test_bad_input.py::test_a_class_left_without_training_images_is_an_error",
        "test_split.py::test_stratified_kfold_names_classes_too_small_for_the_folds",
    ],
    "an empty (0-byte) or header-only `labels.csv`": [
        "test_recipe_checks.py::test_labels_a_classifier_cannot_learn_from_are_refused",
    ],
    "a recipe key that breaks the schema": [
        "test_recipe_checks.py::test_a_schema_error_names_the_key_and_the_constraint_it_breaks",
        "test_recipe_fuzz.py::test_every_fragment_is_used_or_refused_naming_its_key",
    ],
    "a key written twice": [
        "test_recipe_checks.py::test_a_key_written_twice_is_refused_naming_the_file_the_key_and_both_lines",
    ],
    "a key or section the run would not read": [
        "test_recipe_checks.py::test_a_key_the_run_would_not_read_is_refused_and_a_default_never_is",
        "test_recipe_checks.py::test_the_whole_check_stops_in_order_naming_the_file_behind_each_key",
    ],
    "`drop_path` on a backbone": [
        "test_recipe_checks.py::test_drop_path_is_refused_by_key_for_a_built_body_without_drop_path_layers",
    ],
    "`split.folds` with fastai's split": [
        "test_recipe_checks.py::test_a_kfold_recipe_that_cannot_run_is_refused",
    ],
    "fine-tune sizes out of order": [
        "test_recipe_checks.py::test_a_size_plan_that_cannot_be_what_was_meant_is_refused",
        "test_recipe_checks.py::test_the_head_size_past_the_resize_cache_is_refused",
    ],
    "`snapshots: k`": [
        "test_recipe_checks.py::test_a_size_plan_that_cannot_be_what_was_meant_is_refused",
    ],
    "`data.sample_submission` naming a file": [
        "test_workflow.py::test_a_header_only_labels_file_and_a_misnamed_sample_stop_before_anything_runs",
    ],
    "`sample_submission.csv` whose classes disagree": [
        "test_recipe_checks.py::test_the_sample_submission_and_positive_class_must_fit_the_labels",
        "test_recipe_checks.py::test_a_demo_recipes_positive_class_is_checked_against_the_classes_it_builds",
    ],
    "an `out_dir` that is a file": [
        "test_recipe_checks.py::test_an_out_dir_that_is_a_file_is_refused",
    ],
    "a `tracking.uri`": [
        "test_tracking.py::test_a_bad_tracking_key_is_named_with_what_to_write",
        "test_tracking.py::test_bad_tracking_keys_stop_the_workflow_before_any_job",
    ],
    "a tracking store that cannot be reached": [
        "test_tracking.py::test_an_unreachable_server_or_a_locked_store_costs_one_warning_line_and_the_next_run_logs",
    ],
    "`pipeline.compare` on a store": [
        "test_tracking.py::test_compare_prints_the_changed_key_and_both_runs_headline_figures_with_deltas",
        "test_commands.py::test_compare_on_a_file_that_is_not_a_store_says_so_in_one_line_and_leaves_it_as_it_was",
        "test_commands.py::test_compare_refuses_an_in_memory_store_named_by_the_environment",
    ],
    "`pipeline.stages.predict --tta -1`": [
        "test_predict.py::test_arguments_that_would_give_nan_or_nothing_are_refused",
        "test_predict.py::test_an_argument_the_recipe_would_refuse_is_one_line_before_the_checkpoint_loads",
    ],
    "`pipeline.stages.predict` with a missing": [
        "test_predict.py::test_a_bad_checkpoint_is_one_line_naming_the_file",
        "test_predict.py::test_a_checkpoint_that_is_no_file_of_weights_is_one_line_naming_it",
    ],
    "`pipeline.stages.predict` on an image path": [
        "test_predict.py::test_one_image_that_cannot_be_read_is_one_line_naming_it",
        "test_predict.py::test_an_unreadable_file_is_reported_and_the_others_are_still_predicted",
    ],
    "`labels.csv` with a UTF-8 BOM": [
        "test_bad_input.py::test_bom_crlf_and_extra_columns_read_cleanly",
    ],
    "an empty `test/`": [
        "test_bad_input.py::test_an_empty_test_folder_is_an_error",
    ],
    "`sample_submission.csv` whose ids disagree": [
        "test_tta_submission.py::test_a_sample_that_disagrees_fails_loudly",
    ],
    "a recipe with `demo:`": [
        "test_user_data.py::test_a_demo_recipe_pointed_at_a_users_data_stops_before_any_job_and_changes_nothing",
    ],
    "a checkpoint whose classes or architecture disagree": [
        "test_model.py::test_checkpoint_round_trip_and_metadata_checks",
    ],
    "`tta.n_aug` above the distinct views": [
        "test_bundle.py::test_deterministic_tta_refuses_more_passes_than_it_has_views",
    ],
    "`snakemake package` on a run": [
        "test_bundle.py::test_package_refuses_random_tta_before_any_job_runs",
        "test_bundle.py::test_package_names_a_backbone_that_does_not_export_before_any_job_runs",
    ],
    "the bundle's predict.py on an unreadable": [
        "test_bundle.py::test_an_unreadable_or_empty_test_image_gets_the_class_prior_and_one_line_naming_it",
    ],
    "the bundle's predict.py with a missing model file": [
        "test_bundle.py::test_a_missing_damaged_or_newer_bundle_stops_with_one_line_naming_the_file",
        "test_commands.py::test_the_bundles_predict_py_on_a_damaged_bundle_is_one_line_naming_the_file",
    ],
    "a training job that fails": [
        "test_fit.py::test_a_killed_runs_state_is_resumed_by_the_same_parameters_and_removed_by_others",
        "test_interrupt_determinism.py::test_jobs_killed_mid_way_finish_on_rerun_with_the_uninterrupted_results",
    ],
    "any other error of `pipeline.compare`": [
        "test_commands.py::test_an_error_is_one_line_an_unexpected_one_called_internal",
        "test_commands.py::test_compare_shows_the_traceback_when_asked",
    ],
}


def test_every_row_of_the_bad_input_table_names_tests_that_exist():
    rows = [line.split("|")[1].strip() for line in (REPO / "docs" / "bad-input.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith(("| input ", "| --- "))]
    unmatched = [row[:60] for row in rows if not any(row.startswith(start) for start in BAD_INPUT_TESTS)]
    assert not unmatched, f"rows of docs/bad-input.md no test is named for: {unmatched}"
    stale = [start for start in BAD_INPUT_TESTS if not any(row.startswith(start) for row in rows)]
    assert not stale, f"BAD_INPUT_TESTS names rows docs/bad-input.md no longer has: {stale}"
    missing = [test for tests in BAD_INPUT_TESTS.values() for test in tests
               if f"\ndef {test.split('::')[1]}(" not in (REPO / "tests" / test.split("::")[0]).read_text()]
    assert not missing, f"tests named for docs/bad-input.md that do not exist: {missing}"
