from fedprompt.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_KIND_UNSPECIFIED: _ClassVar[TaskKind]
    TASK_KIND_WAIT: _ClassVar[TaskKind]
    TASK_KIND_TRAIN: _ClassVar[TaskKind]
    TASK_KIND_EVALUATE: _ClassVar[TaskKind]
    TASK_KIND_DONE: _ClassVar[TaskKind]
    TASK_KIND_DECRYPT: _ClassVar[TaskKind]
    TASK_KIND_CHECK: _ClassVar[TaskKind]
    TASK_KIND_SHARE: _ClassVar[TaskKind]
TASK_KIND_UNSPECIFIED: TaskKind
TASK_KIND_WAIT: TaskKind
TASK_KIND_TRAIN: TaskKind
TASK_KIND_EVALUATE: TaskKind
TASK_KIND_DONE: TaskKind
TASK_KIND_DECRYPT: TaskKind
TASK_KIND_CHECK: TaskKind
TASK_KIND_SHARE: TaskKind

class DescribeJobRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class DescribeJobResponse(_message.Message):
    __slots__ = ("job_id", "job_name", "job_config_toml", "gram_defence", "config_signature", "crl")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    JOB_NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_CONFIG_TOML_FIELD_NUMBER: _ClassVar[int]
    GRAM_DEFENCE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    job_name: str
    job_config_toml: str
    gram_defence: bool
    config_signature: bytes
    crl: bytes
    def __init__(self, job_id: _Optional[str] = ..., job_name: _Optional[str] = ..., job_config_toml: _Optional[str] = ..., gram_defence: _Optional[bool] = ..., config_signature: _Optional[bytes] = ..., crl: _Optional[bytes] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("job", "num_train_examples", "num_test_examples", "vector_size", "exchange_public_key", "exchange_attestation")
    JOB_FIELD_NUMBER: _ClassVar[int]
    NUM_TRAIN_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    NUM_TEST_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    job: str
    num_train_examples: int
    num_test_examples: int
    vector_size: int
    exchange_public_key: bytes
    exchange_attestation: bytes
    def __init__(self, job: _Optional[str] = ..., num_train_examples: _Optional[int] = ..., num_test_examples: _Optional[int] = ..., vector_size: _Optional[int] = ..., exchange_public_key: _Optional[bytes] = ..., exchange_attestation: _Optional[bytes] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("job_id", "participant_id", "provide_initial_prompt", "deal_keys")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDE_INITIAL_PROMPT_FIELD_NUMBER: _ClassVar[int]
    DEAL_KEYS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    participant_id: str
    provide_initial_prompt: bool
    deal_keys: bool
    def __init__(self, job_id: _Optional[str] = ..., participant_id: _Optional[str] = ..., provide_initial_prompt: _Optional[bool] = ..., deal_keys: _Optional[bool] = ...) -> None: ...

class GetTaskRequest(_message.Message):
    __slots__ = ("job_id", "wait_ms")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    wait_ms: int
    def __init__(self, job_id: _Optional[str] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class GetTaskResponse(_message.Message):
    __slots__ = ("kind", "round", "global_version", "deadline_unix", "reason", "attempt")
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    kind: TaskKind
    round: int
    global_version: int
    deadline_unix: float
    reason: str
    attempt: int
    def __init__(self, kind: _Optional[_Union[TaskKind, str]] = ..., round: _Optional[int] = ..., global_version: _Optional[int] = ..., deadline_unix: _Optional[float] = ..., reason: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class DownloadGlobalRequest(_message.Message):
    __slots__ = ("job_id", "version")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class DownloadGlobalResponse(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.PayloadHeader
    chunk: _common_pb2.PayloadChunk
    def __init__(self, header: _Optional[_Union[_common_pb2.PayloadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.PayloadChunk, _Mapping]] = ...) -> None: ...

class UploadUpdateRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: _common_pb2.PayloadHeader
    chunk: _common_pb2.PayloadChunk
    def __init__(self, header: _Optional[_Union[_common_pb2.PayloadHeader, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.PayloadChunk, _Mapping]] = ...) -> None: ...

class UploadUpdateResponse(_message.Message):
    __slots__ = ("sha256_hex", "bytes_received")
    SHA256_HEX_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    sha256_hex: str
    bytes_received: int
    def __init__(self, sha256_hex: _Optional[str] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class ReportMetricsRequest(_message.Message):
    __slots__ = ("job_id", "version", "metrics", "num_examples")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    metrics: _containers.ScalarMap[str, float]
    num_examples: int
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., num_examples: _Optional[int] = ...) -> None: ...

class ReportMetricsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("job_state",)
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    job_state: str
    def __init__(self, job_state: _Optional[str] = ...) -> None: ...

class PublishContextRequest(_message.Message):
    __slots__ = ("job_id", "public_context", "key_id", "attestation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    public_context: bytes
    key_id: bytes
    attestation: bytes
    def __init__(self, job_id: _Optional[str] = ..., public_context: _Optional[bytes] = ..., key_id: _Optional[bytes] = ..., attestation: _Optional[bytes] = ...) -> None: ...

class PublishContextResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ShareKeyRequest(_message.Message):
    __slots__ = ("job_id", "recipient_id", "sealed_key")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_KEY_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    recipient_id: str
    sealed_key: bytes
    def __init__(self, job_id: _Optional[str] = ..., recipient_id: _Optional[str] = ..., sealed_key: _Optional[bytes] = ...) -> None: ...

class ShareKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetKeysRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class KeyRecipient(_message.Message):
    __slots__ = ("participant_id", "exchange_public_key", "attestation")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXCHANGE_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    exchange_public_key: bytes
    attestation: bytes
    def __init__(self, participant_id: _Optional[str] = ..., exchange_public_key: _Optional[bytes] = ..., attestation: _Optional[bytes] = ...) -> None: ...

class GetKeysResponse(_message.Message):
    __slots__ = ("public_context", "key_id", "dealer_id", "sealed_key", "sealer_id", "sealer_public_key", "needs_key", "owes_evaluation_keys", "dealer_attestation", "sealer_attestation", "crl")
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DEALER_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALER_ID_FIELD_NUMBER: _ClassVar[int]
    SEALER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    NEEDS_KEY_FIELD_NUMBER: _ClassVar[int]
    OWES_EVALUATION_KEYS_FIELD_NUMBER: _ClassVar[int]
    DEALER_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    SEALER_ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    public_context: bytes
    key_id: bytes
    dealer_id: str
    sealed_key: bytes
    sealer_id: str
    sealer_public_key: bytes
    needs_key: _containers.RepeatedCompositeFieldContainer[KeyRecipient]
    owes_evaluation_keys: bool
    dealer_attestation: bytes
    sealer_attestation: bytes
    crl: bytes
    def __init__(self, public_context: _Optional[bytes] = ..., key_id: _Optional[bytes] = ..., dealer_id: _Optional[str] = ..., sealed_key: _Optional[bytes] = ..., sealer_id: _Optional[str] = ..., sealer_public_key: _Optional[bytes] = ..., needs_key: _Optional[_Iterable[_Union[KeyRecipient, _Mapping]]] = ..., owes_evaluation_keys: _Optional[bool] = ..., dealer_attestation: _Optional[bytes] = ..., sealer_attestation: _Optional[bytes] = ..., crl: _Optional[bytes] = ...) -> None: ...

class ReportKeyFaultRequest(_message.Message):
    __slots__ = ("job_id", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportKeyFaultResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReportPrivacyRequest(_message.Message):
    __slots__ = ("job_id", "round", "epsilon", "delta", "declined", "reason")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DECLINED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    epsilon: float
    delta: float
    declined: bool
    reason: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., declined: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportPrivacyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetGramRequest(_message.Message):
    __slots__ = ("job_id", "round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class GetGramResponse(_message.Message):
    __slots__ = ("updates", "ciphertexts")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    updates: int
    ciphertexts: bytes
    def __init__(self, updates: _Optional[int] = ..., ciphertexts: _Optional[bytes] = ...) -> None: ...

class ReportGramRequest(_message.Message):
    __slots__ = ("job_id", "round", "scalars")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SCALARS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    scalars: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., scalars: _Optional[_Iterable[float]] = ...) -> None: ...

class ReportGramResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownloadCheckRequest(_message.Message):
    __slots__ = ("job_id", "round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class CheckVerdict(_message.Message):
    __slots__ = ("valid", "weight")
    VALID_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    weight: float
    def __init__(self, valid: _Optional[bool] = ..., weight: _Optional[float] = ...) -> None: ...

class ReportCheckRequest(_message.Message):
    __slots__ = ("job_id", "round", "verdicts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERDICTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    verdicts: _containers.RepeatedCompositeFieldContainer[CheckVerdict]
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., verdicts: _Optional[_Iterable[_Union[CheckVerdict, _Mapping]]] = ...) -> None: ...

class ReportCheckResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetThresholdKeysRequest(_message.Message):
    __slots__ = ("job_id", "page")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page: int
    def __init__(self, job_id: _Optional[str] = ..., page: _Optional[int] = ...) -> None: ...

class DealtShare(_message.Message):
    __slots__ = ("participant_id", "sealed")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    sealed: bytes
    def __init__(self, participant_id: _Optional[str] = ..., sealed: _Optional[bytes] = ...) -> None: ...

class GetThresholdKeysResponse(_message.Message):
    __slots__ = ("exchange", "shares", "dealt", "dealt_by_caller", "crl", "next_page")
    EXCHANGE_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    DEALT_FIELD_NUMBER: _ClassVar[int]
    DEALT_BY_CALLER_FIELD_NUMBER: _ClassVar[int]
    CRL_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_FIELD_NUMBER: _ClassVar[int]
    exchange: _containers.RepeatedCompositeFieldContainer[KeyRecipient]
    shares: _containers.RepeatedCompositeFieldContainer[KeyRecipient]
    dealt: _containers.RepeatedCompositeFieldContainer[DealtShare]
    dealt_by_caller: bool
    crl: bytes
    next_page: int
    def __init__(self, exchange: _Optional[_Iterable[_Union[KeyRecipient, _Mapping]]] = ..., shares: _Optional[_Iterable[_Union[KeyRecipient, _Mapping]]] = ..., dealt: _Optional[_Iterable[_Union[DealtShare, _Mapping]]] = ..., dealt_by_caller: _Optional[bool] = ..., crl: _Optional[bytes] = ..., next_page: _Optional[int] = ...) -> None: ...

class PublishShareRequest(_message.Message):
    __slots__ = ("job_id", "share", "attestation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    share: bytes
    attestation: bytes
    def __init__(self, job_id: _Optional[str] = ..., share: _Optional[bytes] = ..., attestation: _Optional[bytes] = ...) -> None: ...

class PublishShareResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DealSharesRequest(_message.Message):
    __slots__ = ("job_id", "sealed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sealed: _containers.RepeatedCompositeFieldContainer[DealtShare]
    def __init__(self, job_id: _Optional[str] = ..., sealed: _Optional[_Iterable[_Union[DealtShare, _Mapping]]] = ...) -> None: ...

class DealSharesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownloadDecryptionRequest(_message.Message):
    __slots__ = ("job_id", "round")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class SubmitShareRequest(_message.Message):
    __slots__ = ("job_id", "round", "attempt", "masked_share")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    MASKED_SHARE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    attempt: int
    masked_share: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., attempt: _Optional[int] = ..., masked_share: _Optional[bytes] = ...) -> None: ...

class SubmitShareResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetGramKeysRequest(_message.Message):
    __slots__ = ("job_id", "page")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    page: int
    def __init__(self, job_id: _Optional[str] = ..., page: _Optional[int] = ...) -> None: ...

class GramKeyMessage(_message.Message):
    __slots__ = ("participant_id", "round", "element", "message", "attestation")
    PARTICIPANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    participant_id: str
    round: int
    element: int
    message: bytes
    attestation: bytes
    def __init__(self, participant_id: _Optional[str] = ..., round: _Optional[int] = ..., element: _Optional[int] = ..., message: _Optional[bytes] = ..., attestation: _Optional[bytes] = ...) -> None: ...

class GetGramKeysResponse(_message.Message):
    __slots__ = ("messages", "next_page")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[GramKeyMessage]
    next_page: int
    def __init__(self, messages: _Optional[_Iterable[_Union[GramKeyMessage, _Mapping]]] = ..., next_page: _Optional[int] = ...) -> None: ...

class PublishGramKeyRequest(_message.Message):
    __slots__ = ("job_id", "round", "element", "message", "attestation")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    element: int
    message: bytes
    attestation: bytes
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., element: _Optional[int] = ..., message: _Optional[bytes] = ..., attestation: _Optional[bytes] = ...) -> None: ...

class PublishGramKeyResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
