"""The longest string a request may carry in each field, checked before any servicer code runs.

Every string a caller sends ends up somewhere: compared, stored, quoted in an error, written to a log line.
Bounding them once at the boundary (``rpc.DecodeGuard`` calls ``check`` on every decoded request) keeps a
1 MB ``recipient_id`` from reaching any of those places: it is refused with ``InvalidRequest``
(INVALID_ARGUMENT) naming the field and its length, never quoting the value.

Limits are by field name, because a name means the same thing in every message (``job_id`` is always a job
reference).  A string field missing from ``LIMITS`` still gets ``DEFAULT_CHARS``, so a field added later is
bounded before anyone thinks of it; ``tests/unit/test_bounds.py`` requires every string field of the
participant and admin requests to be listed by name.  Lengths count characters (protobuf strings are valid
UTF-8, at most 4 bytes a character).
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from fedprompt.errors import InvalidRequest

#: A job id or name (``coordinator.jobs.MAX_REF`` refuses longer ones the same way).
JOB_REF_CHARS = 200
#: A participant identity: ``config.IDENTITY`` allows 128 characters.
IDENTITY_CHARS = 128
#: A job's TOML text; the config loader applies its own, tighter checks to what it parses.
CONFIG_CHARS = 1024 * 1024

LIMITS: dict[str, int] = {
    "job": JOB_REF_CHARS,
    "job_id": JOB_REF_CHARS,
    "participant_id": IDENTITY_CHARS,
    "recipient_id": IDENTITY_CHARS,
    "encoding": 64,  # payload encodings are short names ("float32-le", "levels+ckks-v1")
    "metrics": 64,  # a metric name (the map's key): ``coordinator.reports.MAX_METRIC_NAME``
    "reason": 500,  # why a participant declines: ``coordinator.privacy.MAX_REASON``
    "config_toml": CONFIG_CHARS,
}
#: Any string field not named in ``LIMITS`` (e.g. the health service's ``service``).
DEFAULT_CHARS = 256


def check(message: Message, path: str = "") -> None:
    """Refuse ``message`` if any string in it (nested messages, repeated fields and map keys included) is longer
    than its field's limit; the error names the field (``ShareKeyRequest.recipient_id``) and the length."""
    where = path or message.DESCRIPTOR.name
    for field, value in message.ListFields():
        name = f"{where}.{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            for text in (value if field.is_repeated else (value,)):
                _fits(name, field.name, text)
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                key_type, value_type = (field.message_type.fields_by_name[k].type for k in ("key", "value"))
                for key in value:
                    if key_type == FieldDescriptor.TYPE_STRING:
                        _fits(f"{name} key", field.name, key)
                    if value_type == FieldDescriptor.TYPE_STRING:
                        _fits(f"{name} value", field.name, value[key])
                    elif value_type == FieldDescriptor.TYPE_MESSAGE:
                        check(value[key], f"{name}[]")
            else:
                for item in (value if field.is_repeated else (value,)):
                    check(item, name)


def _fits(name: str, field: str, text: str) -> None:
    limit = LIMITS.get(field, DEFAULT_CHARS)
    if len(text) > limit:
        raise InvalidRequest(f"{name}: {len(text)} characters, at most {limit} allowed")
