"""Replay a run's journal into the store: what the store lacks, exactly once, in order.

`sync(folder)` is `python scripts/runs.py sync <dir>`; `resume_replay` runs when `resume=<id>`
reopens a run whose output folder is on this machine. A journal is a file anyone with write
access to the folder may edit, so it is untrusted input here:
- its records go only to the folder's own run: the run the first record names, confirmed by the
  store (the run's `checkpoint.dir` tag lies in this folder); a record naming another run or
  another store is not sent. A population's folder (population.checkpoint) holds one journal
  for its K member runs: the runs its manifest `population.json` lists, each confirmed by the
  store (the population's id in its `population` tag, its `checkpoint.dir` in this folder);
- an artifact or model file it names must lie inside the folder (symlinks resolved);
- a status record may not end a run that is already FINISHED.
Exactly once: each record sent is marked `{"sent": seq}`; a metric point the store already has
(same key, step, time and value) is not sent again (a mark lost to a SIGKILL after the send).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking import owners
from pipeline.tracking.outage import fail_fast, reason, unavailable
from pipeline.tracking.records import SPOOL_NAME, Spool, describe, send
from pipeline.tracking.tags import CHECKPOINT_DIR_TAG

MANIFEST = "population.json"  # a population's folder: its id, member runs and store
POPULATION_TAG = "population"  # the population's id, on each member's run


@dataclass
class Synced:
    """What one `sync` did."""

    spool: Path
    sent: list[dict] = field(default_factory=list)
    before: int = 0  # records sent earlier (by the run or an earlier sync)
    left: list[dict] = field(default_factory=list)  # not sent (the store unavailable or refusing)
    untrusted: list[dict] = field(default_factory=list)  # refused by the rules above
    errors: list[str] = field(default_factory=list)


class Untrusted(ValueError):
    """A journal record that breaks the rules in the module docstring."""


def spool_path(target: Path) -> Path:
    target = Path(target)
    return target / SPOOL_NAME if target.is_dir() else target


def _inside(path: object, folder: Path) -> bool:
    if not isinstance(path, str):
        return False
    return Path(path).resolve().is_relative_to(folder)


def check(record: dict, folder: Path, run_ids: list[str], uri: str | None, status: str) -> None:
    """Untrusted if `record` may not be sent for the runs `run_ids` whose folder is `folder`
    (`status`: the status of the run the record names)."""
    run_id = record.get("run_id")
    if run_id not in run_ids or (uri is not None and record.get("uri") != uri):
        mine = run_ids[0] if len(run_ids) == 1 else f"population runs {', '.join(run_ids)}"
        raise Untrusted(f"it names run {run_id!r} in {record.get('uri')!r}, not "
                        f"this folder's run {mine}")  # fmt: skip
    op = record.get("op")
    if op in ("artifact", "model") and not _inside(record.get("path"), folder):
        raise Untrusted(f"its file {record.get('path')!r} lies outside {folder}")
    where = record.get("dir") or record.get("file") or ""
    if not isinstance(where, str) or ".." in PurePosixPath(where).parts or where.startswith("/"):
        raise Untrusted(f"its artifact path {where!r} leaves the run's artifacts")
    if op == "status" and status == "FINISHED":
        raise Untrusted(f"it would mark the FINISHED run {run_id} {record.get('status')!r}")


class Replica:
    """The store's side of one run: which metric points it has, its status."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        run = client.get_run(run_id)
        self.status, self.tags = run.info.status, run.data.tags
        self.points: dict[str, set[tuple]] = {}  # key -> (step, timestamp, value)

    def lacking(self, record: dict) -> dict | None:
        """`record` without the metric points the store has (None: nothing left to send)."""
        if record["op"] != "metrics":
            return record
        points = []
        for key, value, timestamp, step in record["points"]:
            if key not in self.points:
                history = self.client.get_metric_history(self.run_id, key)
                self.points[key] = {(m.step, m.timestamp, m.value) for m in history}
            if (step, timestamp, value) not in self.points[key]:
                points.append([key, value, timestamp, step])
        return {**record, "points": points} if points else None

    def took(self, record: dict) -> None:
        if record["op"] == "metrics":
            for key, value, timestamp, step in record["points"]:
                self.points.setdefault(key, set()).add((step, timestamp, value))
        elif record["op"] == "status":
            self.status = record["status"]


def _replay(spool: Spool, client: MlflowClient, run_ids: list[str], uri: str | None,
            out: Synced, statuses: bool = True) -> None:  # fmt: skip
    folder = spool.path.parent.resolve()
    replicas = {run_id: Replica(client, run_id) for run_id in run_ids}
    records = spool.pending()
    out.before = sum("op" in line for line in spool.read()) - len(records)
    for index, record in enumerate(records):
        replica = replicas.get(record.get("run_id"))  # type: ignore[arg-type]
        try:
            check(record, folder, run_ids, uri, replica.status if replica else "")
        except Untrusted as error:
            out.untrusted.append(record)
            out.errors.append(f"{describe_safe(record)} (record {record.get('seq')}): {error}")
            continue
        if record["op"] == "status" and not statuses:  # a resume reopens the run
            spool.mark_sent(record["seq"])
            continue
        try:
            missing = replica.lacking(record)
            if missing is not None:
                send(client, missing)
        except Exception as error:
            out.errors.append(f"{describe_safe(record)} (record {record['seq']}): {reason(error)}")
            if unavailable(error):  # the rest waits: it goes in order
                out.left += records[index:]
                return
            out.left.append(record)
            continue
        replica.took(record)
        spool.mark_sent(record["seq"])
        out.sent.append(record)


def describe_safe(record: dict) -> str:
    try:
        return describe([record])
    except (KeyError, TypeError):
        return f"a malformed record {str(record)[:80]!r}"


def folder_runs(spool: Spool, client_for: Callable[[str], MlflowClient], uri: str | None
                ) -> tuple[MlflowClient, list[str], str | None]:  # fmt: skip
    """(client, run ids, the records' store) of the folder's own runs, confirmed by the store:
    a population's members (its manifest), else the run its journal's first record names."""
    manifest = spool.path.parent / MANIFEST
    if manifest.is_file():
        return population_runs(manifest, client_for, uri)
    first = next(iter(spool.pending()), None) or next(
        (line for line in spool.read() if "op" in line), None
    )
    run_id, named = (first or {}).get("run_id"), (first or {}).get("uri")
    if not isinstance(run_id, str) or not isinstance(named, str):
        raise Untrusted(f"{spool.path} names no run")
    client = client_for(uri or named)
    try:
        tag = Replica(client, run_id).tags.get(CHECKPOINT_DIR_TAG)
    except MlflowException:
        raise Untrusted(f"{spool.path} names run {run_id}, which {uri or named} lacks") from None
    folder = spool.path.parent.resolve()
    if tag is None or not _inside(tag, folder):
        raise Untrusted(
            f"{spool.path} names run {run_id}, whose output folder is {tag and Path(tag).parent}, "
            f"not {folder}: a journal only completes its own folder's run"
        )
    return client, [run_id], named


def population_runs(manifest: Path, client_for: Callable[[str], MlflowClient], uri: str | None
                    ) -> tuple[MlflowClient, list[str], str | None]:  # fmt: skip
    """A population folder's member runs: its manifest's, each confirmed by the store."""
    try:
        data = json.loads(manifest.read_text())
        pid, run_ids, named = data["population"], list(data["run_ids"]), data["uri"]
        if not all(isinstance(x, str) for x in (pid, named, *run_ids)) or not run_ids:
            raise TypeError
    except (ValueError, TypeError, KeyError, OSError):
        raise Untrusted(f"{manifest} is not a population's manifest") from None
    client, folder = client_for(uri or named), manifest.parent.resolve()
    for run_id in run_ids:
        try:
            tags = Replica(client, run_id).tags
        except MlflowException:
            raise Untrusted(f"{manifest} names run {run_id}, which {uri or named} lacks") from None
        if tags.get(POPULATION_TAG) != pid or not _inside(tags.get(CHECKPOINT_DIR_TAG), folder):
            raise Untrusted(
                f"{manifest} names run {run_id}, which is no member of the population {pid} "
                f"whose folder is {folder}: a journal only completes its own folder's runs"
            )
    return client, run_ids, named


def sync(
    target: Path, uri: str | None = None, client_for: Callable[[str], MlflowClient] = MlflowClient
) -> Synced:
    """Send a journal's unsent records, in order, to its run's store (or `uri`)."""
    fail_fast()
    spool = Spool(spool_path(target))
    if not spool.path.is_file():
        raise FileNotFoundError(f"no spool at {spool.path}")
    live = [w for w in spool.writers() if isinstance(w, dict) and owners.owner_alive(w)]
    if live:
        raise RuntimeError(
            f"the process that writes {spool.path} (pid {live[0].get(owners.PID_TAG)}) is still "
            "running; it sends the spool itself, or run sync once it has ended"
        )
    result = Synced(spool.path)
    with spool.locked():
        if not spool.pending():
            result.before = sum("op" in line for line in spool.read())
            return result
        client, run_ids, named = folder_runs(spool, client_for, uri)
        _replay(spool, client, run_ids, named, result)
    return result


def resume_replay(journal: Path, client: MlflowClient, run_id: str) -> Synced:
    """Before a resumed run goes on: its journal's unsent records (not its old status)."""
    spool = Spool(journal)
    result = Synced(spool.path)
    if spool.path.is_file():
        with spool.locked():
            _replay(spool, client, [run_id], None, result, statuses=False)
    return result


def population_replay(journal: Path, client: MlflowClient, run_ids: list[str]) -> Synced:
    """Before a resumed population goes on: its journal's unsent records for `run_ids` (the
    members that go on, confirmed by the caller), not their old status."""
    spool = Spool(journal)
    result = Synced(spool.path)
    if spool.path.is_file() and run_ids:
        with spool.locked():
            _replay(spool, client, run_ids, None, result, statuses=False)
    return result
