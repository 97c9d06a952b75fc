"""A run folder's checkpoints and lock (harness/train/checkpoint.py), without training: fast."""

from __future__ import annotations

import multiprocessing as mp
import os
import platform
import signal
import stat

import pytest
import torch

from harness.train import TrainingError, checkpoint


def _its(run_dir) -> dict[str, int]:
    """The iteration each readable checkpoint file of a run folder holds."""
    out = {}
    for name in checkpoint.CHECKPOINT_NAMES:
        try:
            out[name] = torch.load(run_dir / name, weights_only=True)["it"]
        except Exception:
            out[name] = None
    return out


def _truncate(path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_corrupt_last_is_set_aside_and_the_backup_survives_the_next_save(tmp_path):
    """Issue 15.2: after falling back to prev.pt, the next save used to rotate the unreadable last.pt over it."""
    checkpoint.save(tmp_path, {"it": 1})
    checkpoint.save(tmp_path, {"it": 2})
    _truncate(tmp_path / "last.pt")
    with pytest.warns(UserWarning, match=r"unreadable.*moved to last\.pt\.corrupt"):
        name, state = checkpoint.load_latest(tmp_path)
    assert (name, state["it"]) == ("prev.pt", 1)
    assert (tmp_path / "last.pt.corrupt").is_file() and not (tmp_path / "last.pt").exists()
    checkpoint.save(tmp_path, {"it": 3})  # the resumed run's next checkpoint
    assert _its(tmp_path) == {"last.pt": 3, "prev.pt": 1}
    _truncate(tmp_path / "last.pt")  # and should that one be lost too, the backup is still there
    with pytest.warns(UserWarning):
        assert checkpoint.load_latest(tmp_path)[1]["it"] == 1


def test_garbled_tensor_data_is_detected(tmp_path):
    """torch.load reads garbled tensor bytes without complaint: the records' CRC-32s catch them."""
    checkpoint.save(tmp_path, {"it": 1, "w": torch.zeros(10_000)})
    checkpoint.save(tmp_path, {"it": 2, "w": torch.ones(10_000)})
    data = bytearray((tmp_path / "last.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(range(64))
    (tmp_path / "last.pt").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="CRC"):
        name, state = checkpoint.load_latest(tmp_path)
    assert name == "prev.pt" and torch.equal(state["w"], torch.zeros(10_000))


def test_no_readable_checkpoint_means_a_fresh_start(tmp_path):
    assert checkpoint.load_latest(tmp_path) is None
    checkpoint.save(tmp_path, {"it": 1})
    checkpoint.save(tmp_path, {"it": 2})
    _truncate(tmp_path / "last.pt")
    _truncate(tmp_path / "prev.pt")
    with pytest.warns(UserWarning):
        assert checkpoint.load_latest(tmp_path) is None
    assert {p.name for p in tmp_path.iterdir()} == {"last.pt.corrupt", "prev.pt.corrupt"}


def test_only_the_saving_process_sets_a_corrupt_checkpoint_aside(tmp_path):
    checkpoint.save(tmp_path, {"it": 1})
    checkpoint.save(tmp_path, {"it": 2})
    _truncate(tmp_path / "last.pt")
    with pytest.warns(UserWarning):
        assert checkpoint.load_latest(tmp_path, set_aside=False)[0] == "prev.pt"
    assert (tmp_path / "last.pt").exists() and not (tmp_path / "last.pt.corrupt").exists()


def test_a_checkpoint_of_the_same_iteration_keeps_the_backup(tmp_path):
    checkpoint.save(tmp_path, {"it": 3})
    checkpoint.save(tmp_path, {"it": 6})
    checkpoint.save(tmp_path, {"it": 6, "evals": [1]}, rotate=False)  # the same step, its evaluation added
    assert _its(tmp_path) == {"last.pt": 6, "prev.pt": 3}


def test_checkpoints_are_readable_by_colleagues(tmp_path):
    """Issue 15.6: mkstemp made them 0600; they get 0666 less the umask, as every other file."""
    old = os.umask(0o022)
    try:
        checkpoint.save(tmp_path, {"it": 1})
        checkpoint.save(tmp_path, {"it": 2})
    finally:
        os.umask(old)
    for name in checkpoint.CHECKPOINT_NAMES:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]  # no temporary file left


# ---------------------------------------------------------------------------------------------------------------
# the lock
def _hold(run_dir, ready) -> None:
    lock = checkpoint.lock_run_dir(run_dir)  # noqa: F841 (held while the process lives)
    ready.set()
    signal.pause()


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path's lock (forked: no imports to pay)."""
    ctx = mp.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold, args=(tmp_path, ready), daemon=True)
    proc.start()
    assert ready.wait(30), "the holder did not take the lock"
    yield proc
    if proc.is_alive():
        proc.kill()
    proc.join()


def test_a_second_process_is_refused_with_the_holder_named(tmp_path, holder):
    with pytest.raises(checkpoint.RunLockedError) as refused:
        checkpoint.lock_run_dir(tmp_path)
    message = str(refused.value)
    assert isinstance(refused.value, TrainingError) and "\n" not in message
    assert str(tmp_path) in message and f"pid {holder.pid} on {platform.node()}" in message


def test_the_lock_dies_with_its_holder(tmp_path, holder):
    """kill -9 of the holder frees the folder: a requeued or resumed job gets it."""
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    with checkpoint.lock_run_dir(tmp_path):
        assert f"pid {os.getpid()}" in (tmp_path / checkpoint.LOCK_FILE).read_text()
    with checkpoint.lock_run_dir(tmp_path):  # released: taken again
        pass


def test_train_refuses_a_locked_run_folder_before_doing_anything(tmp_path, holder):
    """Issue 15.3: two `harness train` on one folder both ran, every metrics line twice."""
    from harness.config import compose
    from harness.train.loop import train

    with pytest.raises(checkpoint.RunLockedError, match=f"pid {holder.pid}"):
        train(compose(["loader.workers=0", "log.progress=none"]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.LOCK_FILE]
