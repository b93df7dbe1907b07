from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class DescribeModelRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("model", "kind", "hidden_size", "embedding_std", "max_batch", "max_prompt_tokens", "max_length")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_STD_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    model: str
    kind: str
    hidden_size: int
    embedding_std: float
    max_batch: int
    max_prompt_tokens: int
    max_length: int
    def __init__(self, model: _Optional[str] = ..., kind: _Optional[str] = ..., hidden_size: _Optional[int] = ..., embedding_std: _Optional[float] = ..., max_batch: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_length: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("texts", "labels", "label_words", "template", "max_length", "prompt_tokens", "prompt", "init_seed")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LABEL_WORDS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    INIT_SEED_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.RepeatedScalarFieldContainer[int]
    label_words: _containers.RepeatedScalarFieldContainer[str]
    template: str
    max_length: int
    prompt_tokens: int
    prompt: _containers.RepeatedScalarFieldContainer[float]
    init_seed: int
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., labels: _Optional[_Iterable[int]] = ..., label_words: _Optional[_Iterable[str]] = ..., template: _Optional[str] = ..., max_length: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., prompt: _Optional[_Iterable[float]] = ..., init_seed: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("logits", "num_labels", "loss")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    logits: _containers.RepeatedScalarFieldContainer[float]
    num_labels: int
    loss: float
    def __init__(self, logits: _Optional[_Iterable[float]] = ..., num_labels: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...
