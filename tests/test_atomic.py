import pytest

from jump_n2v.plumbing.atomic import atomic_output


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


def test_the_next_write_removes_only_its_own_outputs_leftovers(tmp_path):
    # A killed job left .tmp-* stores behind (gigabytes for a plate), forever.
    final = tmp_path / "DNA.zarr"
    leftovers = [tmp_path / ".tmp-0123abcd-DNA.zarr", tmp_path / ".old-89abcdef-DNA.zarr"]
    for path in leftovers:
        (path / "c").mkdir(parents=True)
        (path / "c" / "0").write_bytes(b"chunk")
    (tmp_path / ".tmp-0123abcd-DNA.zarr.lock").touch()  # its writer is gone: nobody holds the lock
    others = [tmp_path / ".tmp-0123abcd-RNA.zarr", tmp_path / ".tmp-0123abcd-x-DNA.zarr"]  # other outputs'
    for path in others:
        path.mkdir()
    with atomic_output(final) as temporary:
        temporary.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["DNA.zarr", *(p.name for p in others)])


def test_a_temporary_another_live_writer_is_filling_is_kept(tmp_path):
    import subprocess
    import sys
    import time

    final = tmp_path / "out.txt"
    ready = tmp_path / "ready"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom pathlib import Path\nfrom jump_n2v.plumbing.atomic import atomic_output\n"
        f"with atomic_output({str(final)!r}) as t:\n    t.write_text('x')\n    Path({str(ready)!r}).touch()\n    time.sleep(600)\n"
    )])
    try:
        while not ready.exists():
            assert writer.poll() is None
            time.sleep(0.05)
        live = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-") and not p.name.endswith(".lock")]
        with atomic_output(final) as temporary:
            temporary.write_text("mine")
        assert all(p.exists() for p in live) and len(live) == 1
    finally:
        writer.kill()
        writer.wait()
    with atomic_output(final) as temporary:  # the killed writer's temporary is now a leftover
        temporary.write_text("again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "ready"]
