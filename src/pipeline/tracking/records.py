"""A run's journal: the JSON-lines file that keeps its records, how each is sent, how it is told.

A record is one write of a run (`op`: metrics, tags, artifact, text, model, status) with its
run id and store URI. `Spool` is the file (`mlflow-spool.jsonl`, in the run's output folder):
records numbered by `seq`, `{"sent": seq}` marks, and `{"writer": owner tags}` lines.

Write-ahead: every record is appended here before it is sent (the store is a replica), and
`commit()` (fsync) runs before a checkpoint that counts it as done is written. Appends are
plain writes: a SIGKILL does not lose what the kernel holds; `commit` guards against a crash
of the machine as well. The file is also read back (sync, resume): it is untrusted input there.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

from pipeline.tracking import owners

SPOOL_NAME = "mlflow-spool.jsonl"
MODEL_NAME = "mlflow-model.pt"  # the model's weights to log, until the store has taken it
# The networks a spooled model record may name, and how to build one from its JSON arguments:
# a spool is a file anyone with write access may edit, so it never names code to import.
MODELS = {"mlp": ("pipeline.model.mlp", "MLP")}


def describe(records: list[dict]) -> str:
    """'3 metric batches (120 points), 2 artifacts, the final status FINISHED'."""
    parts = []
    metrics = [r for r in records if r["op"] == "metrics"]
    if metrics:
        points = sum(len(r["points"]) for r in metrics)
        parts.append(f"{len(metrics)} metric batch(es) ({points} points)")
    for op, name in (("tags", "tag set(s)"), ("artifact", "artifact(s)"), ("text", "text file(s)")):
        if count := sum(r["op"] == op for r in records):
            parts.append(f"{count} {name}")
    if any(r["op"] == "model" for r in records):
        parts.append("the model")
    parts += [f"the final status {r['status']}" for r in records if r["op"] == "status"]
    return ", ".join(parts) or "nothing"


def send(client: MlflowClient, record: dict) -> None:
    """Write one record to the store (raises what the store raises)."""
    run_id, op = record["run_id"], record["op"]
    if op == "metrics":
        metrics = [Metric(key, value, ts, step) for key, value, ts, step in record["points"]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif op == "tags":
        tags = [RunTag(key, value) for key, value in record["tags"].items()]
        client.log_batch(run_id, tags=tags, synchronous=True)
    elif op == "artifact":
        if not Path(record["path"]).is_file():
            raise FileNotFoundError(f"{record['path']} is gone")
        client.log_artifact(run_id, record["path"], record.get("dir"))
    elif op == "text":
        client.log_text(run_id, record["text"], record["file"])
    elif op == "model":
        from pipeline.tracking import models

        net, example = load_model(record)
        models.log_model(client.tracking_uri, run_id, net, example)
        Path(record["path"]).unlink(missing_ok=True)
    elif op == "status":
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"unknown spool record {op!r}")


def save_model(net: Any, example: Any, path: Path) -> dict:
    """Keep a network to log later: its weights and input example (tensors only) in `path`, its
    constructor arguments in the returned `build` (JSON, for the spool record)."""
    import torch

    kind = next((k for k, (_, name) in MODELS.items() if type(net).__name__ == name), None)
    if kind is None or not hasattr(net, "init_args"):
        raise TypeError(f"cannot spool a {type(net).__name__}: only {sorted(MODELS)} nets")
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    # Saved in memory, then written: on a full disk, torch's own file writer fails with "unexpected
    # pos" and its traceback keeps the cut file open (its space held until the process ends).
    buffer = io.BytesIO()
    torch.save({"state_dict": state, "example": example.detach().cpu()}, buffer)
    try:
        path.write_bytes(buffer.getbuffer())
    except OSError as error:  # the cut file: no use, and its space is what the store needs
        path.unlink(missing_ok=True)
        raise OSError(error.errno, error.strerror, str(path)) from None
    return {"kind": kind, "args": dict(net.init_args)}


def load_model(record: dict) -> tuple[Any, Any]:
    """The network and example of a spooled model record, rebuilt from its JSON arguments and
    weights read with `weights_only=True`: no spool file can make this run code."""
    import importlib

    import torch

    build = record.get("build")
    if not isinstance(build, dict) or build.get("kind") not in MODELS:
        raise ValueError(f"the spooled model {record['path']} names no known network")
    module, name = MODELS[build["kind"]]
    net = getattr(importlib.import_module(module), name)(**build["args"])
    saved = torch.load(record["path"], map_location="cpu", weights_only=True)
    net.load_state_dict(saved["state_dict"])  # as float32 (a float64 run's too): MLflow's
    # signature inference runs the model on a float32 copy of the example
    return net.eval(), saved["example"].float()


class Spool:
    """The JSON-lines file: records (`seq`, `op`, ...), `{"sent": seq}` marks, writer lines."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.next_seq: int | None = None
        self.broken: OSError | None = None  # the spool could not be written (a full disk)
        self.lock = threading.Lock()  # the training thread adds, the writer's thread marks

    def _append(self, line: dict) -> None:
        text = json.dumps(line) + "\n"  # one write() per line: a kill cuts at most the last
        with self.lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a") as file:
                    file.write(text)
            except OSError as error:  # the writer still holds its records: only the copy is lost
                self.broken = self.broken or error

    def commit(self) -> None:
        """Make every line appended so far durable (fsync): before a checkpoint is written."""
        with self.lock:
            try:
                if self.path.exists():
                    with self.path.open("a") as file:
                        os.fsync(file.fileno())
            except OSError as error:
                self.broken = self.broken or error

    def add(self, record: dict) -> None:
        with self.lock:
            if self.next_seq is None:
                lines = self.read() if self.path.exists() else []
                seqs = [line["seq"] for line in lines if isinstance(line.get("seq"), int)]
                self.next_seq = 1 + max(seqs, default=0)
                first = True
            else:
                first = False
            record["seq"], self.next_seq = self.next_seq, self.next_seq + 1
        if first:
            self._append({"writer": owners.owner_tags()})  # sync refuses while it lives
        self._append(record)

    def mark_sent(self, seq: int) -> None:
        self._append({"sent": seq})

    def read(self) -> list[dict]:
        lines = []
        for line in self.path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash
                value = json.loads(line)
                if isinstance(value, dict):
                    lines.append(value)
        return lines

    def pending(self) -> list[dict]:
        """The records not marked sent, in order (by `seq`; a repeated `seq` counts once)."""
        lines = self.read()
        sent = {line["sent"] for line in lines if "sent" in line}
        records: dict[int, dict] = {}
        for line in lines:
            seq = line.get("seq")
            if "op" in line and isinstance(seq, int) and seq not in sent:
                records.setdefault(seq, line)
        return [records[seq] for seq in sorted(records)]

    def writers(self) -> list[dict]:
        return [line["writer"] for line in self.read() if "writer" in line]

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One sync at a time."""
        import fcntl  # POSIX; the spool is written without it

        with self.path.open("a") as file:
            fcntl.flock(file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(file, fcntl.LOCK_UN)
