"""EpochTimer counts the training batches only: not validation, not the checkpoint after it."""

from __future__ import annotations

from pipeline.training import callbacks


class Module:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log(self, name: str, value: float, **_) -> None:
        self.logged[name] = value


def test_epoch_time_excludes_validation_and_what_follows_it(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])
    timer, module = callbacks.EpochTimer(), Module()

    def at(t: float, hook: str, *args) -> None:
        now[0] = t
        getattr(timer, hook)(None, module, *args)

    at(0, "on_train_epoch_start")
    at(0, "on_train_batch_start", None, 0)
    at(3, "on_validation_start")  # a validation inside the epoch (val_check_interval)...
    at(5, "on_validation_end")
    at(6, "on_train_batch_start", None, 1)  # ...and 1 s of checkpointing after it: not counted
    at(10, "on_validation_start")  # the epoch's last validation
    at(12, "on_validation_end")
    at(15, "on_train_epoch_end")  # ModelCheckpoint wrote in between
    assert module.logged["epoch_time_s"] == 3 + 4
