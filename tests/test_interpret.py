"""The interpret stage: which images it picks, its tables, and its figures on a small hand-made validation set."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.stages import interpret

CLASSES = ["cat", "dog", "fox"]
# Six validation images, their labels and predicted probabilities (cat, dog, fox).
ROWS = pd.DataFrame({"id": [f"i{k}" for k in range(6)], "label": ["cat", "cat", "cat", "dog", "dog", "fox"]})
PROBS = np.array([
    [0.90, 0.05, 0.05],  # cat, right and sure
    [0.60, 0.30, 0.10],  # cat, right
    [0.10, 0.85, 0.05],  # cat taken for a dog, sure of it
    [0.45, 0.50, 0.05],  # dog, right by a hair
    [0.20, 0.70, 0.10],  # dog, right
    [0.05, 0.05, 0.90],  # fox, right
])


@pytest.fixture
def scored():
    return interpret.scored_rows(ROWS, PROBS, CLASSES)


def test_each_image_gets_its_loss_prediction_and_margin(scored):
    assert scored["predicted_label"].tolist() == ["cat", "cat", "dog", "dog", "dog", "fox"]
    np.testing.assert_allclose(scored["loss"], -np.log([0.9, 0.6, 0.1, 0.5, 0.7, 0.9]))
    np.testing.assert_allclose(scored["margin"], [0.85, 0.3, 0.75, 0.05, 0.5, 0.85])


def test_most_confused_counts_the_wrong_pairs_most_frequent_first(scored):
    two_wrong = pd.concat([scored, scored.iloc[[2]].assign(id="again")], ignore_index=True)
    table = interpret.most_confused(pd.concat([two_wrong, scored.iloc[[3]].assign(correct=False,
                                                                                   predicted_label="fox")]))
    assert table.to_dict("records") == [{"actual": "cat", "predicted": "dog", "count": 2},
                                        {"actual": "dog", "predicted": "fox", "count": 1}]


def test_per_class_table_puts_the_worst_log_loss_first(scored):
    table = interpret.per_class(scored)
    assert table["label"].tolist() == ["cat", "dog", "fox"]
    assert table["n"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(table["accuracy"], [2 / 3, 1, 1])
    np.testing.assert_allclose(table["log_loss"], [-np.log([0.9, 0.6, 0.1]).mean(), -np.log([0.5, 0.7]).mean(),
                                                   -np.log(0.9)])


def test_lesson_ones_three_views_of_a_class(scored):
    cat = interpret.class_extremes(scored, "cat", 2)
    assert cat["most correct"]["id"].tolist() == ["i0", "i1"]
    assert cat["most incorrect"]["id"].tolist() == ["i2"]
    assert cat["most uncertain"]["id"].tolist() == ["i1", "i2"]
    dog = interpret.class_extremes(scored, "dog", 2)
    assert dog["most incorrect"].empty and dog["most uncertain"]["id"].tolist() == ["i3", "i4"]


def test_the_stage_writes_its_tables_and_figures_from_the_resize_cache(tmp_path, monkeypatch):
    shown = {}
    for figure in ("titled_images", "class_extremes"):  # record what each figure shows, then draw it as usual
        real = getattr(interpret.plots, figure)
        monkeypatch.setattr(interpret.plots, figure,
                            lambda *args, real=real, figure=figure: (shown.setdefault(figure, args), real(*args)))
    cache = tmp_path / "resized"
    (cache / "train").mkdir(parents=True)
    paths = [f"train/{image_id}.jpg" for image_id in ROWS["id"]]
    for index, path in enumerate(paths):
        Image.new("RGB", (48, 40), (40 * index, 100, 200)).save(cache / path)
    split = ROWS.assign(is_valid=True, path=paths)
    split = pd.concat([split, split.head(3).assign(id=["t0", "t1", "t2"], is_valid=False)], ignore_index=True)
    split.to_csv(tmp_path / "split.csv", index=False)
    np.save(tmp_path / "valid_probs.npy", PROBS)
    out = tmp_path / "interpret"
    interpret.main(["--split-csv", str(tmp_path / "split.csv"), "--valid-rows", str(tmp_path / "split.csv"),
                    "--valid-probs", str(tmp_path / "valid_probs.npy"), "--cache-dir", str(cache),
                    "--out-dir", str(out), "--params", '{"size": 32, "top_losses": 4, "classes": 2}'])
    assert pd.read_csv(out / "per_class.csv")["n"].sum() == 6
    assert pd.read_csv(out / "most_confused.csv").to_dict("records") == [{"actual": "cat", "predicted": "dog",
                                                                          "count": 1}]
    for figure in ("top_losses.png", "by_class.png"):
        assert (out / figure).read_bytes()[:4] == b"\x89PNG"
    # The worst first: the 4 highest losses (the cat taken for a dog, then the near-miss dog, ...), and the 2 classes
    # of the highest log loss, each with its most correct, most incorrect and most uncertain images.
    titles = [title.split("\n")[0] for title in shown["titled_images"][1]]
    assert titles == ["cat / dog", "dog / dog", "cat / cat", "dog / dog"]
    grid, row_titles = shown["class_extremes"][:2]
    assert list(grid) == ["cat", "dog"] and [title.split("\n")[0] for title in row_titles] == ["cat", "dog"]
    assert [caption for _, caption in grid["cat"]["most incorrect"]] == ["dog 0.85"]


def test_probabilities_that_do_not_match_the_rows_are_refused(tmp_path, capsys):
    ROWS.assign(is_valid=True, path="x.jpg").to_csv(tmp_path / "split.csv", index=False)
    np.save(tmp_path / "valid_probs.npy", PROBS[:4])
    with pytest.raises(SystemExit):
        interpret.main(["--split-csv", str(tmp_path / "split.csv"), "--valid-rows", str(tmp_path / "split.csv"),
                        "--valid-probs", str(tmp_path / "valid_probs.npy"), "--cache-dir", str(tmp_path),
                        "--out-dir", str(tmp_path / "out"), "--params", '{"size": 32}'])
    assert "has shape (4, 3)" in capsys.readouterr().err
