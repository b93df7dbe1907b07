"""Sealing job keys for one recipient: round trip and every way a blob must fail to open."""

from __future__ import annotations

import pytest

from fedprompt.crypto.errors import InvalidCiphertext
from fedprompt.crypto.sealing import new_exchange_key, public_bytes, seal, unseal


def _pair():
    sender, recipient = new_exchange_key(), new_exchange_key()
    blob = seal(b"secret context", sender=sender, recipient_public=public_bytes(recipient), job_id="job-1",
                sender_id="a", recipient_id="b")
    return sender, recipient, blob


def test_round_trip() -> None:
    sender, recipient, blob = _pair()
    assert b"secret context" not in blob
    assert unseal(blob, recipient=recipient, sender_public=public_bytes(sender), job_id="job-1", sender_id="a",
                  recipient_id="b") == b"secret context"


@pytest.mark.parametrize("change", ["job", "recipient_id", "sender_id", "sender_key", "recipient_key", "tamper"])
def test_blob_opens_only_for_its_job_recipient_and_sender(change: str) -> None:
    sender, recipient, blob = _pair()
    kwargs = {"recipient": recipient, "sender_public": public_bytes(sender), "job_id": "job-1", "sender_id": "a",
              "recipient_id": "b"}
    if change == "job":
        kwargs["job_id"] = "job-2"
    elif change == "recipient_id":
        kwargs["recipient_id"] = "c"
    elif change == "sender_id":
        kwargs["sender_id"] = "mallory"
    elif change == "sender_key":
        kwargs["sender_public"] = public_bytes(new_exchange_key())
    elif change == "recipient_key":
        kwargs["recipient"] = new_exchange_key()
    else:
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(InvalidCiphertext):
        unseal(blob, **kwargs)


def test_malformed_keys_are_refused() -> None:
    with pytest.raises(InvalidCiphertext, match="32-byte"):
        seal(b"x", sender=new_exchange_key(), recipient_public=b"short", job_id="j", sender_id="a", recipient_id="b")
