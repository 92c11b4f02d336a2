"""The demo builder writes only into a folder it created itself (or found empty), and can tell which one that is."""
from pathlib import Path

import pytest

from conftest import checksums
from pipeline.data import demo_folder
from pipeline.stages import demo_data


def small_build(folder: Path, **kwargs) -> None:
    demo_data.build(folder, "csv", n_labeled=12, n_test=3, classes=["zero", "one"], large_fraction=0.0, **kwargs)


@pytest.fixture
def user_data(tmp_path) -> Path:
    folder = tmp_path / "mydata"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "cat.jpg").write_bytes(b"\xff\xd8 a user's photo")
    (folder / "labels.csv").write_text("id,breed\ncat,tabby\n")
    return folder


def test_a_folder_with_someone_elses_files_is_refused_before_anything_is_written(user_data):
    before = checksums(user_data)
    with pytest.raises(demo_folder.NotTheDemoFolder, match="did not create.*labels.csv, train"):
        small_build(user_data)
    assert checksums(user_data) == before
    assert not (user_data / demo_folder.OWNER_MARKER).exists()


def test_the_command_line_builder_stops_with_the_reason_and_leaves_the_folder_alone(user_data, capsys):
    before = checksums(user_data)
    with pytest.raises(SystemExit):
        demo_data.main([str(user_data), "--n-labeled", "12", "--n-test", "3", "--classes", "zero", "one"])
    assert "recipe without `demo:`" in capsys.readouterr().err
    assert checksums(user_data) == before


def test_an_absent_or_empty_folder_is_claimed_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "absent" / "nested", tmp_path / "empty"):
        assert demo_folder.ownership_problem(folder) is None
        small_build(folder)
        assert (folder / demo_folder.OWNER_MARKER).is_file()
        assert (folder / demo_folder.BUILT_MARKER).is_file()
        assert len(list((folder / "train").glob("*.jpg"))) == 12


def test_a_rebuild_of_its_own_folder_replaces_everything_in_it(tmp_path):
    folder = tmp_path / "demo"
    small_build(folder, seed=0)
    (folder / "train" / "left_over.jpg").write_bytes(b"from an older build")
    first = checksums(folder)
    small_build(folder, seed=1)
    second = checksums(folder)
    assert "train/left_over.jpg" not in second
    assert first["labels.csv"] != second["labels.csv"]
    assert demo_folder.ownership_problem(folder) is None


def test_a_file_in_place_of_the_folder_is_refused(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    assert "is a file" in demo_folder.ownership_problem(tmp_path / "data")
    with pytest.raises(demo_folder.NotTheDemoFolder):
        small_build(tmp_path / "data")
    assert (tmp_path / "data").read_text() == "not a folder"


def test_a_symlink_inside_its_own_folder_is_unlinked_not_followed(tmp_path, user_data):
    folder = tmp_path / "demo"
    small_build(folder)
    (folder / "link_to_user_data").symlink_to(user_data, target_is_directory=True)
    before = checksums(user_data)
    small_build(folder)
    assert not (folder / "link_to_user_data").exists()
    assert checksums(user_data) == before
