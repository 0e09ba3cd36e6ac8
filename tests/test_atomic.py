import pytest

from jump_n2v.atomic import atomic_output


def test_file_appears_only_when_the_write_completes(tmp_path):
    final = tmp_path / "out.txt"
    with atomic_output(final) as temporary:
        temporary.write_text("done")
        assert not final.exists()
    assert final.read_text() == "done"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_leaves_neither_output_nor_temporary(tmp_path):
    final = tmp_path / "store.zarr"
    with pytest.raises(RuntimeError):
        with atomic_output(final) as temporary:
            temporary.mkdir()
            (temporary / "chunk").write_bytes(b"x")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_previous_output(tmp_path):
    final = tmp_path / "out.txt"
    final.write_text("old")
    with pytest.raises(ValueError):
        with atomic_output(final) as temporary:
            temporary.write_text("half")
            raise ValueError
    assert final.read_text() == "old"


def test_directory_output_replaces_an_existing_directory(tmp_path):
    final = tmp_path / "store.zarr"
    final.mkdir()
    (final / "stale").write_text("old")
    with atomic_output(final) as temporary:
        temporary.mkdir()
        (temporary / "fresh").write_text("new")
    assert [p.name for p in final.iterdir()] == ["fresh"]
    assert [p.name for p in tmp_path.iterdir()] == ["store.zarr"]
