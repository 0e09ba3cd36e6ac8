"""Writer locks between processes: a second writer fails at once naming the first; a killed one frees it."""

import os
import signal
import subprocess
import sys
import time

import pytest

from jump_n2v.plumbing.locks import WriterLockedError, model_folder_lock

HOLD = """
import sys, time
from pathlib import Path
from jump_n2v.plumbing.locks import model_folder_lock
with model_folder_lock(sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def hold_lock(model_dir, ready, cwd):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(model_dir), str(ready)], cwd=cwd)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert holder.poll() is None, "the lock holder exited"
        assert time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return holder


def test_a_second_writer_of_a_model_folder_fails_at_once_naming_the_first(tmp_path):
    # Two runs from different working directories sharing one results folder trained the same model
    # at once, one resuming from the other's checkpoint.
    model_dir = tmp_path / "results" / "e" / "models" / "P1" / "DNA"
    other_cwd = tmp_path / "other-checkout"
    other_cwd.mkdir()
    holder = hold_lock(model_dir, tmp_path / "ready", other_cwd)
    try:
        with pytest.raises(WriterLockedError) as caught:
            with model_folder_lock(model_dir):
                pytest.fail("entered a model folder another process is writing")
        message = str(caught.value)
        assert f"model folder {model_dir} is being written by another run" in message
        assert f"pid {holder.pid} on host {os.uname().nodename}" in message
        assert f"working directory {other_cwd}" in message and "started 20" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # as when a run is killed: the kernel drops its lock
        holder.wait()
    with model_folder_lock(model_dir):
        pass


def test_the_same_process_writes_again_after_releasing(tmp_path):
    with model_folder_lock(tmp_path / "m"):
        pass
    with model_folder_lock(tmp_path / "m"):
        pass


def test_training_into_a_model_folder_another_run_is_writing_fails_before_training(tmp_path):
    import numpy as np
    import zarr

    raw = tmp_path / "raw.zarr"
    zarr.create_array(store=str(raw), data=np.random.default_rng(0).poisson(100, (2, 32, 32)).astype(np.uint16))
    model_dir = tmp_path / "models" / "DNA"
    holder = hold_lock(model_dir, tmp_path / "ready", tmp_path)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "jump_n2v", "train", str(raw), "--out", str(model_dir),
             "--set", "epochs=1", "--set", "steps_per_epoch=1", "--set", "patch_size=16", "--set", "batch_size=2"],
            capture_output=True, text=True, timeout=300,
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.returncode != 0
    assert f"is being written by another run: pid {holder.pid}" in result.stderr
    assert not (model_dir / "checkpoint.pt").exists() and not (model_dir / "model.pt").exists()


HOLD_WITH_LOG = """
import sys, time
from pathlib import Path
from jump_n2v.plumbing.locks import output_lock
with output_lock(sys.argv[1], log=sys.argv[3]):
    with open(sys.argv[3], "a") as log:
        log.write("holder: epoch 1 of 2\\n")
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def test_a_refused_writer_puts_the_holders_log_back_where_snakemake_deleted_it(tmp_path):
    from jump_n2v.plumbing.locks import output_lock

    store = tmp_path / "results" / "e" / "P1" / "raw" / "DNA.zarr"
    log = tmp_path / "results" / "e" / "logs" / "split_raw" / "P1" / "DNA.log"
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WITH_LOG, str(store), str(ready), str(log)], cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
            time.sleep(0.05)
        log.unlink()  # what Snakemake does to a job's log before the job starts
        with pytest.raises(WriterLockedError) as caught:
            with output_lock(store, log=log):
                pytest.fail("entered a store another process is writing")
        assert f"{store} is being written by another run: pid {holder.pid}" in str(caught.value)
        assert f"its log is {log}" in str(caught.value)
        assert log.read_text() == "holder: epoch 1 of 2\n"
        with open(store.parent / ".DNA.zarr.writer.log", "a") as same_file:
            same_file.write("holder: epoch 2 of 2\n")  # the holder writes on: the same file
        assert log.read_text().endswith("epoch 2 of 2\n")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with output_lock(store, log=log):
        assert (store.parent / ".DNA.zarr.writer.log").samefile(log)
    assert not (store.parent / ".DNA.zarr.writer.log").exists()
