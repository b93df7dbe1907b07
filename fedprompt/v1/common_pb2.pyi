from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PayloadHeader(_message.Message):
    __slots__ = ("job_id", "round", "encoding", "total_bytes", "num_chunks", "sha256", "num_examples", "vector_size")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    VECTOR_SIZE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    encoding: str
    total_bytes: int
    num_chunks: int
    sha256: bytes
    num_examples: int
    vector_size: int
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., encoding: _Optional[str] = ..., total_bytes: _Optional[int] = ..., num_chunks: _Optional[int] = ..., sha256: _Optional[bytes] = ..., num_examples: _Optional[int] = ..., vector_size: _Optional[int] = ...) -> None: ...

class PayloadChunk(_message.Message):
    __slots__ = ("index", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
