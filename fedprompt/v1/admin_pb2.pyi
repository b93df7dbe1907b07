from fedprompt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CreateJobRequest(_message.Message):
    __slots__ = ("config_toml", "config_signature")
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    config_toml: str
    config_signature: bytes
    def __init__(self, config_toml: _Optional[str] = ..., config_signature: _Optional[bytes] = ...) -> None: ...

class CreateJobResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StartJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class StartJobResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class PauseJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class PauseJobResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class CancelJobResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class GetJobStatusRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class RoundStatus(_message.Message):
    __slots__ = ("round", "state", "selected", "reported", "opened_at", "closed_at", "bytes_up", "bytes_down", "metrics", "metric_reports", "attempt", "rejected")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    OPENED_AT_FIELD_NUMBER: _ClassVar[int]
    CLOSED_AT_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRIC_REPORTS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    round: int
    state: str
    selected: _containers.RepeatedScalarFieldContainer[str]
    reported: _containers.RepeatedScalarFieldContainer[str]
    opened_at: float
    closed_at: float
    bytes_up: int
    bytes_down: int
    metrics: _containers.ScalarMap[str, float]
    metric_reports: int
    attempt: int
    rejected: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., state: _Optional[str] = ..., selected: _Optional[_Iterable[str]] = ..., reported: _Optional[_Iterable[str]] = ..., opened_at: _Optional[float] = ..., closed_at: _Optional[float] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., metric_reports: _Optional[int] = ..., attempt: _Optional[int] = ..., rejected: _Optional[_Iterable[str]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "name", "state", "current_round", "total_rounds", "global_version", "participants", "aggregator", "vector_size", "initial_metrics", "rounds", "config_toml", "reason", "quarantined")
    class InitialMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATOR_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    INITIAL_METRICS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    state: str
    current_round: int
    total_rounds: int
    global_version: int
    participants: int
    aggregator: str
    vector_size: int
    initial_metrics: _containers.ScalarMap[str, float]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundStatus]
    config_toml: str
    reason: str
    quarantined: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., current_round: _Optional[int] = ..., total_rounds: _Optional[int] = ..., global_version: _Optional[int] = ..., participants: _Optional[int] = ..., aggregator: _Optional[str] = ..., vector_size: _Optional[int] = ..., initial_metrics: _Optional[_Mapping[str, float]] = ..., rounds: _Optional[_Iterable[_Union[RoundStatus, _Mapping]]] = ..., config_toml: _Optional[str] = ..., reason: _Optional[str] = ..., quarantined: _Optional[_Iterable[str]] = ...) -> None: ...

class GetJobStatusResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: JobStatus
    def __init__(self, status: _Optional[_Union[JobStatus, _Mapping]] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[JobStatus, _Mapping]]] = ...) -> None: ...

class ListParticipantsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ParticipantInfo(_message.Message):
    __slots__ = ("participant_id", "job_id", "state", "num_train_examples", "joined_at", "last_seen", "updates_accepted", "reason", "record_epsilon")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    UPDATES_ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RECORD_EPSILON_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    job_id: str
    state: str
    num_train_examples: int
    joined_at: float
    last_seen: float
    updates_accepted: int
    reason: str
    record_epsilon: float
    def __init__(self, participant_id: _Optional[str] = ..., job_id: _Optional[str] = ..., state: _Optional[str] = ..., num_train_examples: _Optional[int] = ..., joined_at: _Optional[float] = ..., last_seen: _Optional[float] = ..., updates_accepted: _Optional[int] = ..., reason: _Optional[str] = ..., record_epsilon: _Optional[float] = ...) -> None: ...

class ListParticipantsResponse(_message.Message):
    __slots__ = ("participants",)
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    participants: _containers.RepeatedCompositeFieldContainer[ParticipantInfo]
    def __init__(self, participants: _Optional[_Iterable[_Union[ParticipantInfo, _Mapping]]] = ...) -> None: ...

class ExportPromptRequest(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ExportPromptResponse(_message.Message):
    __slots__ = ("header", "chunk", "job_config_toml")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    JOB_CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.PayloadHeader
    chunk: _common_pb2.PayloadChunk
    job_config_toml: str
    def __init__(self, header: _Optional[_Union[_common_pb2.PayloadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.PayloadChunk, _Mapping]] = ..., job_config_toml: _Optional[str] = ...) -> None: ...

class ListFlagsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class Flag(_message.Message):
    __slots__ = ("round", "attempt", "participant_id", "accepted", "score", "score_name", "defence")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_NAME_FIELD_NUMBER: _ClassVar[int]
    DEFENCE_FIELD_NUMBER: _ClassVar[int]
    round: int
    attempt: int
    participant_id: str
    accepted: bool
    score: float
    score_name: str
    defence: str
    def __init__(self, round: _Optional[int] = ..., attempt: _Optional[int] = ..., participant_id: _Optional[str] = ..., accepted: _Optional[bool] = ..., score: _Optional[float] = ..., score_name: _Optional[str] = ..., defence: _Optional[str] = ...) -> None: ...

class ListFlagsResponse(_message.Message):
    __slots__ = ("flags", "quarantined", "streaks")
    class StreaksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    STREAKS_FIELD_NUMBER: _ClassVar[int]
    flags: _containers.RepeatedCompositeFieldContainer[Flag]
    quarantined: _containers.RepeatedScalarFieldContainer[str]
    streaks: _containers.ScalarMap[str, int]
    def __init__(self, flags: _Optional[_Iterable[_Union[Flag, _Mapping]]] = ..., quarantined: _Optional[_Iterable[str]] = ..., streaks: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReleaseParticipantRequest(_message.Message):
    __slots__ = ("job_id", "participant_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    participant_id: str
    def __init__(self, job_id: _Optional[str] = ..., participant_id: _Optional[str] = ...) -> None: ...

class ReleaseParticipantResponse(_message.Message):
    __slots__ = ("state",)
    STATE_FIELD_NUMBER: _ClassVar[int]
    state: str
    def __init__(self, state: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("job_id", "limit")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    limit: int
    def __init__(self, job_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("seq", "at", "identity", "action", "job_id", "arguments_json", "outcome")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    seq: int
    at: float
    identity: str
    action: str
    job_id: str
    arguments_json: str
    outcome: str
    def __init__(self, seq: _Optional[int] = ..., at: _Optional[float] = ..., identity: _Optional[str] = ..., action: _Optional[str] = ..., job_id: _Optional[str] = ..., arguments_json: _Optional[str] = ..., outcome: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...
