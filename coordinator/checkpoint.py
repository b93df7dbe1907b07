"""Prompt checkpoints: the latest global version of every job as one file, written atomically.

The SQLite store stays the source of truth (it holds every version); a checkpoint is the portable copy
an operator backs up or ships elsewhere, valid at every instant: it is written to a temporary file in the
same directory, fsynced, renamed over the old one and the directory fsynced, so a crash leaves either the
previous checkpoint or the new one, never a torn file.  The payload bytes are stored as given (float32 now,
ciphertexts once encryption is on) with their encoding and SHA-256, plus the job config to rebuild the model.

The file is named after the job's id alone, checked against ``fedprompt.protocol.JOB_ID`` (never its name,
whatever text that is), so it stays inside ``checkpoints/``.  A job whose checkpoint cannot be written is
paused with the reason (``JobManager.each``); the others' checkpoints and rounds go on.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import structlog
from safetensors.numpy import load, save

from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.runtime import JobRuntime
from fedprompt.errors import InvalidUpdate
from fedprompt.protocol import Payload, checked_job_id

log = structlog.get_logger("coordinator.checkpoint")


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers and crashes only ever see the old or the new file; a write
    the file system refuses leaves the old file and no temporary one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_checkpoint(path: Path, payload: Payload, config_toml: str) -> None:
    """Atomically write one global version with what is needed to verify and use it."""
    metadata = {"job_id": payload.job_id, "version": str(payload.round), "encoding": payload.encoding,
                "vector_size": str(payload.vector_size), "sha256": hashlib.sha256(payload.data).hexdigest(),
                "job_config_toml": config_toml}
    atomic_write(path, save({"payload": np.frombuffer(payload.data, dtype=np.uint8)}, metadata=metadata))


def read_checkpoint(path: Path) -> tuple[Payload, str]:
    """A checkpoint's payload (digest verified) and job config TOML."""
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as fh:
        meta = fh.metadata() or {}
    if "sha256" not in meta:
        raise InvalidUpdate(f"{path} is not a fedprompt checkpoint")
    data = load(path.read_bytes())["payload"].tobytes()
    if hashlib.sha256(data).hexdigest() != meta["sha256"]:
        raise InvalidUpdate(f"{path}: SHA-256 does not match its metadata")
    payload = Payload(meta["job_id"], int(meta["version"]), meta["encoding"], int(meta["vector_size"]), data)
    return payload, meta["job_config_toml"]


class Checkpointer:
    """Keeps ``<state_dir>/checkpoints/<job_id>.safetensors`` at each job's latest global version."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.written: dict[str, int] = {}

    def path(self, job_id: str) -> Path:
        """The job's checkpoint file, refused (``InvalidRequest``) for an id that is not one safe name."""
        return self.directory / f"{checked_job_id(job_id, 'checkpoint')}.safetensors"

    def sync(self, jobs: JobManager) -> None:
        """Write a checkpoint for every job whose latest version is newer than its file (cheap when none is);
        each job on its own (``JobManager.each``): one that cannot be written pauses that job only."""
        jobs.each("checkpoint", self.write)

    def write(self, job: JobRuntime) -> None:
        """Write ``job``'s checkpoint if its latest version is newer than the one written."""
        latest = job.latest_version()
        if latest is None or self.written.get(job.job_id) == latest:
            return
        path = self.path(job.job_id)
        write_checkpoint(path, job.stored_payload(latest), job.config_toml)
        self.written[job.job_id] = latest
        log.info("checkpoint written", job_id=job.job_id, version=latest, path=str(path))
