"""Read an offline W&B run back in tests (wandb 0.31 ships no reader for ``.wandb`` files).

The file is a leveldb-style log: a 7-byte file header (``b":W&B"``, magic 0xBEE1, version 0),
then 32 KiB blocks of records, each with a 7-byte header (crc32 of type byte + payload, payload
length, type FULL/FIRST/MIDDLE/LAST). Payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_FILE_HEADER = struct.Struct("<4sHB")
_RECORD_HEADER = struct.Struct("<IHB")
_BLOCK_LEN = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class RunRecords:
    """What an offline run recorded.

    Keys are as logged (``"train/critic_loss"`` stays one key); values that wandb stores
    nested, such as a logged dict or a ``wandb.Image``, come back as nested dicts.
    """

    path: Path
    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None  # None: the run was never finished

    def rows_with(self, key: str) -> list[dict[str, Any]]:
        """History rows that contain ``key``."""
        return [row for row in self.history if key in row]


def find_offline_runs(save_dir: str | Path) -> list[Path]:
    """Offline run directories under ``save_dir`` (or ``save_dir/wandb``), oldest first."""
    root = Path(save_dir)
    runs = sorted(root.glob("offline-run-*")) or sorted(root.glob("wandb/offline-run-*"))
    return [run for run in runs if run.is_dir()]


def read_run(run: str | Path, timeout: float = 10.0) -> RunRecords:
    """Parse an offline run directory or its ``run-<id>.wandb`` file.

    ``wandb.finish()`` in wandb 0.31 can return before wandb-core has flushed the file (measured:
    1 in 12 reads right after finish saw only the 7-byte header), so this re-reads until the
    run's exit record is there and the file stopped growing, for at most ``timeout`` seconds.
    A run that never finished comes back as read at the timeout, with ``exit_code`` None.
    """
    path = Path(run)
    if path.is_dir():
        candidates = sorted(path.glob("run-*.wandb"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"expected one run-*.wandb in {path}, found {candidates}")
        path = candidates[0]

    deadline = time.monotonic() + timeout
    previous_size = -1
    while True:
        data = path.read_bytes()
        records = _parse(data, path)
        if records.exit_code is not None and len(data) == previous_size:
            return records
        if time.monotonic() > deadline:
            return records
        previous_size = len(data)
        time.sleep(0.02)


def _parse(data: bytes, path: Path) -> RunRecords:
    out = RunRecords(path=path)
    for payload in _payloads(data, path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _put(row, item, _history_value(item))
            out.history.append(row)
        elif kind == "run":
            out.run_id, out.project = record.run.run_id, record.run.project
            out.group, out.name = record.run.run_group, record.run.display_name
            _apply(out.config, record.run.config)
            _apply(out.summary, record.run.summary)
        elif kind == "config":
            _apply(out.config, record.config)
        elif kind == "summary":
            _apply(out.summary, record.summary)
        elif kind == "metric":
            m = record.metric
            out.metrics.append(
                {"name": m.name, "glob_name": m.glob_name, "step_metric": m.step_metric}
            )
        elif kind == "files":
            out.files.extend(f.path for f in record.files.files)
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    # wandb's own bookkeeping, not user config
    out.config.pop("_wandb", None)
    return out


def _payloads(data: bytes, path: Path) -> Iterator[bytes]:
    """Reassemble record payloads from the block-framed log."""
    ident, magic, version = _FILE_HEADER.unpack_from(data, 0)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B log file (header {ident!r}, {magic:#x}, {version})")

    pos, pending = _FILE_HEADER.size, b""
    while pos < len(data):
        left_in_block = _BLOCK_LEN - pos % _BLOCK_LEN
        if left_in_block < _RECORD_HEADER.size:  # too small for a header: zero trailer
            pos += left_in_block
            continue
        if pos + _RECORD_HEADER.size > len(data):
            break  # truncated tail of a run that is still being written
        crc, length, kind = _RECORD_HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding to the end of the block
            pos += left_in_block
            continue
        start = pos + _RECORD_HEADER.size
        chunk = data[start : start + length]
        if len(chunk) < length:
            break
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: bad checksum in record at byte {pos}")
        pos = start + length

        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        else:
            raise ValueError(f"{path}: unknown record type {kind} at byte {pos}")


def _path(item: Any) -> list[str]:
    return list(item.nested_key) or [item.key]


def _put(target: dict[str, Any], item: Any, value: Any) -> None:
    *parents, leaf = _path(item)
    for name in parents:
        target = target.setdefault(name, {})
    target[leaf] = value


def _history_value(item: pb.HistoryItem) -> Any:
    if item.value_json:
        return json.loads(item.value_json)
    # Typed fields, used instead of value_json by some wandb versions.
    kind = item.WhichOneof("value")
    if kind is None or kind == "none":
        return None
    value = getattr(item, kind)
    return json.loads(value) if kind == "json" else value


def _apply(target: dict[str, Any], record: pb.ConfigRecord | pb.SummaryRecord) -> None:
    for item in record.update:
        _put(target, item, json.loads(item.value_json))
    for item in record.remove:
        *parents, leaf = _path(item)
        for name in parents:
            target = target.get(name, {})
        target.pop(leaf, None)
