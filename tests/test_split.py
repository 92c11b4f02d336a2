import numpy as np
import pandas as pd
import pytest

from pipeline.recipe import defaults as recipe_defaults
from pipeline.data.dataset import DataError, all_images, class_counts, read_folders, read_labels_csv
from pipeline.stages import split as split_stage
from pipeline.stages.split import get_cv_idxs


def make_split(labeled, params):
    """The split as the stage makes it from a slice: the schema's defaults for what `params` leaves out."""
    return split_stage.make_split(labeled, recipe_defaults.complete(params, split_stage.RECIPE_KEYS))


def fastai_07_get_cv_idxs(n, cv_idx=4, val_pct=0.2, seed=42):
    # The 0.7 source, verbatim in behaviour (old/fastai/dataset.py).
    np.random.seed(seed)
    n_val = int(val_pct * n)
    idx_start = cv_idx * n_val
    idxs = np.random.permutation(n)
    return idxs[idx_start:idx_start + n_val]


def test_cv_idxs_are_the_lessons_printed_indices_for_dog_breeds():
    # The lesson notebook printed val_idxs = get_cv_idxs(10222): array([3694, 1573, 6281, ..., 5734, 5191, 5390])
    val = get_cv_idxs(10222)
    assert len(val) == 2044
    assert val[:3].tolist() == [3694, 1573, 6281]
    assert val[-3:].tolist() == [5734, 5191, 5390]


@pytest.mark.parametrize("n, cv_idx, val_pct, seed", [(100, 0, 0.2, 1), (57, 2, 0.25, 7), (25000, 4, 0.2, 42)])
def test_cv_idxs_match_fastai_for_other_arguments(n, cv_idx, val_pct, seed):
    np.testing.assert_array_equal(get_cv_idxs(n, cv_idx, val_pct, seed), fastai_07_get_cv_idxs(n, cv_idx, val_pct, seed))


def test_fastai_split_marks_those_rows_of_labels_csv_in_file_order(csv_data):
    labeled = read_labels_csv(csv_data)
    split = make_split(labeled, {"layout": "csv", "method": "fastai"})
    expected = set(fastai_07_get_cv_idxs(len(labeled)))
    assert set(np.flatnonzero(split["is_valid"])) == expected
    assert split["id"].tolist() == pd.read_csv(csv_data / "labels.csv")["id"].tolist()


def test_stratified_kfold_folds_partition_the_rows_and_keep_class_shares(csv_data):
    labeled = read_labels_csv(csv_data)
    folds = [make_split(labeled, {"layout": "csv", "method": "stratified_kfold", "n_folds": 3, "fold": k,
                                    "seed": 0}) for k in range(3)]
    valid_sets = [set(np.flatnonzero(f["is_valid"])) for f in folds]
    assert set().union(*valid_sets) == set(range(len(labeled)))
    assert sum(len(v) for v in valid_sets) == len(labeled)
    counts = class_counts(folds[0]).set_index("label")
    shares = counts["n_valid"] / (counts["n_train"] + counts["n_valid"])
    assert shares.between(0.25, 0.42).all()


def test_stratified_kfold_names_classes_too_small_for_the_folds(csv_data):
    labeled = read_labels_csv(csv_data)
    labeled.loc[0, "label"] = "rare"
    with pytest.raises(DataError, match="rare"):
        make_split(labeled, {"layout": "csv", "method": "stratified_kfold", "n_folds": 5, "fold": 0})


def test_folder_layout_uses_the_valid_folder(folder_data):
    labeled = read_folders(folder_data)
    split = make_split(labeled, {"layout": "folders"})
    assert split["is_valid"].tolist() == split["path"].str.startswith("valid/").tolist()
    assert sorted(split["label"].unique()) == ["one", "seven"]


def test_labels_csv_with_bom_crlf_and_extra_columns_reads_the_first_two(tmp_path, csv_data):
    rows = pd.read_csv(csv_data / "labels.csv")
    (tmp_path / "train").symlink_to(csv_data / "train")
    text = "id,breed,extra\r\n" + "".join(f"{i},{b},x\r\n" for i, b in zip(rows["id"], rows["breed"]))
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    table = read_labels_csv(tmp_path)
    assert table["id"].tolist() == rows["id"].tolist()
    assert table["label"].tolist() == rows["breed"].tolist()


@pytest.mark.parametrize("bad_id, message", [("../etc/passwd", "separator"), ("a/b", "separator"),
                                             ("a\\b", "separator"), ("/abs", "separator"), ("", "empty id")])
def test_ids_that_could_escape_the_data_folder_are_refused_with_their_row(tmp_path, bad_id, message):
    (tmp_path / "train").mkdir()
    (tmp_path / "labels.csv").write_text(f"id,breed\nok,x\n{bad_id},y\n")
    with pytest.raises(DataError, match=f"line 3.*{message}"):
        read_labels_csv(tmp_path)


def test_missing_images_and_duplicate_ids_are_named(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jpg").write_bytes(b"")
    (tmp_path / "labels.csv").write_text("id,breed\na,x\nb,y\n")
    with pytest.raises(DataError, match="train/b.jpg"):
        read_labels_csv(tmp_path)
    (tmp_path / "labels.csv").write_text("id,breed\na,x\na,y\n")
    with pytest.raises(DataError, match="duplicate ids a"):
        read_labels_csv(tmp_path)


def nan_labelled_data(folder):
    """labels.csv whose second class is spelt `NaN`, each image a (never decoded) stand-in, and one test image."""
    for name in ("train", "test"):
        (folder / name).mkdir()
    for path in ("train/a.jpg", "train/b.jpg", "test/t.jpg"):
        (folder / path).write_bytes(b"\xff\xd8")
    (folder / "labels.csv").write_text("id,breed\na,x\nb,NaN\n")
    return folder


def test_a_label_reading_nan_is_a_class_only_among_the_sample_submissions(tmp_path):
    data = nan_labelled_data(tmp_path)
    with pytest.raises(DataError, match="line 3: the label 'NaN' of id 'b' reads as a missing value"):
        read_labels_csv(data)
    with pytest.raises(DataError, match="line 3: the label 'NaN'"):
        read_labels_csv(data, sample_classes=["x", "NA"])
    assert read_labels_csv(data, sample_classes=["x", "NaN"])["label"].tolist() == ["x", "NaN"]


def test_the_image_stages_read_the_paths_of_such_labels_without_judging_them(tmp_path):
    # image_stats and resize know no sample submission; the plan-time check and the split judge the labels
    assert all_images(nan_labelled_data(tmp_path), "csv")["path"].tolist() == ["train/a.jpg", "train/b.jpg",
                                                                               "test/t.jpg"]


def test_a_class_folder_named_nan_is_a_class(tmp_path):
    # A folder's name is what someone typed, not a reader's guess at an empty cell: the folder layout keeps it.
    for split_name in ("train", "valid"):
        for label in ("NaN", "cat"):
            (tmp_path / split_name / label).mkdir(parents=True)
            (tmp_path / split_name / label / f"{split_name}{label}.jpg").write_bytes(b"\xff\xd8")
    assert sorted(read_folders(tmp_path)["label"].unique()) == ["NaN", "cat"]

