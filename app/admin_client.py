"""A blocking admin client over gRPC, used by the ``fedprompt admin`` CLI and the demo."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np

from fedprompt.config import sign_config
from fedprompt.crypto.attest import KeySigner
from fedprompt.crypto.pki import load_cert, load_key
from fedprompt.errors import ConfigError, FedPromptError
from fedprompt.promptfile import load_prompt, save_prompt
from fedprompt.protocol import AuditView, FlagsView, JobView, ParticipantView
from fedprompt.v1 import admin_pb2, admin_pb2_grpc
from fedprompt.wire import serde
from fedprompt.wire.channel import ClientTls, open_channel
from fedprompt.wire.payload import ChunkAssembler, decode_vector
from fedprompt.wire.rpc import error_from_rpc

__all__ = ["AdminClient", "load_prompt", "save_prompt"]


class AdminClient:
    """Admin calls; ``tls`` is the admin's certificate (``None``: plaintext to an ``--insecure`` coordinator).
    With a certificate, every job config it submits is signed with its key (``config.signed``), so members can
    tell the roster, t and HE parameters are the admin's and not the coordinator's."""

    def __init__(self, target: str, tls: ClientTls | None = None, timeout_s: float = 30.0) -> None:
        self.signer = None if tls is None else KeySigner(load_cert(Path(tls.cert)), load_key(Path(tls.key)))
        self.channel = open_channel(target, tls)
        self.stub = admin_pb2_grpc.AdminServiceStub(self.channel)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.channel.close()

    def _unary(self, method: str, request: object) -> object:
        try:
            return getattr(self.stub, method)(request, timeout=self.timeout_s)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc

    def create_job(self, config_toml: str) -> str:
        signature = b""
        if self.signer is not None:
            try:
                signature = sign_config(self.signer, config_toml)
            except ConfigError:  # unsigned: the coordinator refuses it naming the bad key, as it always did
                signature = b""
        request = admin_pb2.CreateJobRequest(config_toml=config_toml, config_signature=signature)
        return self._unary("CreateJob", request).job_id  # type: ignore[attr-defined]

    def start(self, job_id: str) -> str:
        return self._unary("StartJob", admin_pb2.StartJobRequest(job_id=job_id)).state  # type: ignore[attr-defined]

    def pause(self, job_id: str) -> str:
        return self._unary("PauseJob", admin_pb2.PauseJobRequest(job_id=job_id)).state  # type: ignore[attr-defined]

    def cancel(self, job_id: str) -> str:
        return self._unary("CancelJob", admin_pb2.CancelJobRequest(job_id=job_id)).state  # type: ignore[attr-defined]

    def status(self, job_id: str) -> JobView:
        response = self._unary("GetJobStatus", admin_pb2.GetJobStatusRequest(job_id=job_id))
        return serde.job_from_pb(response.status)  # type: ignore[attr-defined]

    def jobs(self) -> list[JobView]:
        response = self._unary("ListJobs", admin_pb2.ListJobsRequest())
        return [serde.job_from_pb(j) for j in response.jobs]  # type: ignore[attr-defined]

    def participants(self, job_id: str = "") -> list[ParticipantView]:
        response = self._unary("ListParticipants", admin_pb2.ListParticipantsRequest(job_id=job_id))
        return [serde.participant_from_pb(p) for p in response.participants]  # type: ignore[attr-defined]

    def flags(self, job_id: str) -> FlagsView:
        return serde.flags_from_pb(self._unary("ListFlags", admin_pb2.ListFlagsRequest(job_id=job_id)))  # type: ignore[arg-type]

    def release(self, job_id: str, participant_id: str) -> str:
        request = admin_pb2.ReleaseParticipantRequest(job_id=job_id, participant_id=participant_id)
        return self._unary("ReleaseParticipant", request).state  # type: ignore[attr-defined]

    def audit(self, job_id: str = "", limit: int = 0) -> list[AuditView]:
        """Admin actions oldest first: the latest ``limit`` (0: the coordinator's maximum) on one job or all."""
        response = self._unary("ListAudit", admin_pb2.ListAuditRequest(job_id=job_id, limit=limit))
        return [serde.audit_from_pb(e) for e in response.entries]  # type: ignore[attr-defined]

    def export(self, job_id: str, out: Path, version: int | None = None) -> Path:
        """Fetch a global prompt (``version`` None: the latest) and save it with its job config as safetensors."""
        vector, config_toml, stored = self.fetch_global(job_id, version)
        save_prompt(out, vector, config_toml, stored, job_id)
        return out

    def fetch_global(self, job_id: str, version: int | None = None) -> tuple[np.ndarray, str, int]:
        """A plaintext job's global vector (``version`` None: the latest), its job config and its version."""
        try:
            stream = self.stub.ExportPrompt(admin_pb2.ExportPromptRequest(job_id=job_id, version=version),
                                            timeout=self.timeout_s)
            first = next(stream)
            if first.WhichOneof("part") != "header":
                raise FedPromptError("export stream did not start with a header")
            assembler = ChunkAssembler(serde.header_from_pb(first.header), 256 * 1024 * 1024)
            for message in stream:
                assembler.add(message.chunk.index, message.chunk.data)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from exc
        payload = assembler.finish()
        return decode_vector(payload, payload.vector_size), first.job_config_toml, payload.round

