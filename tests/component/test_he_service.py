"""Encrypted aggregation over real gRPC: key dealing through the relay, and every refusal of point 4 leaves
the encrypted sum untouched (checked by decrypting the round's aggregate)."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedprompt.app.admin_client import AdminClient
from fedprompt.config import HESection, dump_toml
from fedprompt.crypto.ckks import ENCODING, SecretContext
from fedprompt.errors import DuplicateUpdate, InvalidUpdate, PermissionDenied, PreconditionFailed
from fedprompt.participant.grpc_link import GrpcLink
from fedprompt.participant.keys import EXCHANGE_FILE, SECRET_FILE, KeyHolder, key_dir
from fedprompt.protocol import Payload, TaskKind
from fedprompt.v1 import common_pb2, participant_pb2
from fedprompt.wire import serde
from tests.fakes import check_over_links
from tests.support import LiveCoordinator, tiny_job, wait_for

SIZE = 5000  # two ciphertexts (4096 reals each, weight slot included)
HE = HESection(enabled=True, mode="single_key")
WEIGHTS = {"a": 7, "b": 11, "c": 5}


def _job(tmp_path: Path) -> str:
    config = tiny_job(tmp_path, rounds=1, participants_per_round=3, min_participants=3)
    return dump_toml(dataclasses.replace(config, he=HE))


def delta(name: str) -> np.ndarray:
    return np.random.default_rng(ord(name)).normal(0, 0.05, SIZE)


@dataclass
class Live:
    """A live coordinator whose encrypted job has round 1 open: a dealt the key, b and c got it through the relay."""

    coordinator: LiveCoordinator
    job_id: str
    links: dict[str, GrpcLink]
    holders: dict[str, KeyHolder]


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(_job(tmp_path))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in WEIGHTS}
        holders = {n: KeyHolder(link, HE.params(), job_id) for n, link in links.items()}
        for name, link in links.items():
            info = link.join(job_id, 30, 4, SIZE, holders[name].public_key)
            holders[name].joined(name, info.deal_keys)
            assert info.deal_keys == (name == "a")
        holders["a"].refresh()  # the dealer seals the key for b and c
        for name in ("b", "c"):
            holders[name].refresh()
            assert holders[name].require().key_id == holders["a"].require().key_id
        initial = holders["a"].require().encrypt(np.zeros(SIZE), 1)
        links["a"].upload(Payload(job_id, 0, ENCODING, SIZE, initial))
        admin.start(job_id)
        wait_for(lambda: coordinator.call(lambda: coordinator.server.jobs.job(job_id).open), 10, what="round 1")
        yield Live(coordinator, job_id, links, holders)
        for link in links.values():
            link.close()
        admin.close()


def update(job_id: str, data: bytes, n: int) -> Payload:
    return Payload(job_id, 1, ENCODING, SIZE, data, num_examples=n)


def honest(holders: dict[str, KeyHolder], job_id: str, name: str) -> Payload:
    n = WEIGHTS[name]
    return update(job_id, holders[name].require().encrypt(delta(name) * n, n), n)


def raw_upload(link: GrpcLink, header: common_pb2.PayloadHeader, data: bytes) -> grpc.StatusCode:
    messages = [participant_pb2.UploadUpdateRequest(header=header),
                participant_pb2.UploadUpdateRequest(chunk=common_pb2.PayloadChunk(index=0, data=data))]
    try:
        link.stub.UploadUpdate(iter(messages), metadata=link.metadata, timeout=10)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def test_rejections_leave_the_encrypted_sum_intact(live: Live) -> None:
    coordinator, job_id, links, holders = live.coordinator, live.job_id, live.links, live.holders
    good = honest(holders, job_id, "a")
    ciphertext = good.data
    # 1. made under another job's key (a fresh key pair, as another job's dealer would have)
    other = SecretContext.create(HE.params())
    with pytest.raises(InvalidUpdate, match="another key"):
        links["a"].upload(update(job_id, other.encrypt(delta("a"), 1), 1))
    # 2. truncated (a consistent header and digest over the truncated bytes)
    with pytest.raises(InvalidUpdate, match="truncated"):
        links["a"].upload(update(job_id, ciphertext[:-1000], WEIGHTS["a"]))
    # 3. tampered in transit: the digest in the header no longer matches
    tampered = bytearray(ciphertext)
    tampered[5000] ^= 0xFF
    header = serde.header_to_pb(good.header(len(ciphertext)))
    assert raw_upload(links["a"], header, bytes(tampered)) is grpc.StatusCode.INVALID_ARGUMENT
    # 4. tampered with a matching digest: the ciphertext no longer parses under the job's context
    tampered[60:200] = b"\xff" * 140
    with pytest.raises(InvalidUpdate, match="does not parse"):
        links["a"].upload(update(job_id, bytes(tampered), WEIGHTS["a"]))
    # 5. a wrong number of ciphertext chunks: one ciphertext where the vector needs two
    first_len = int.from_bytes(ciphertext[43:47], "little")
    one = ciphertext[:41] + (1).to_bytes(2, "little") + ciphertext[43 : 47 + first_len]
    with pytest.raises(InvalidUpdate, match="1 ciphertexts"):
        links["a"].upload(update(job_id, one, WEIGHTS["a"]))
    # 6. a wrong number of transport chunks announced
    short = dataclasses.replace(good.header(len(ciphertext)), num_chunks=2)
    assert raw_upload(links["a"], serde.header_to_pb(short), ciphertext) is grpc.StatusCode.INVALID_ARGUMENT
    # honest uploads, then 7. a duplicate
    links["a"].upload(good)
    with pytest.raises(DuplicateUpdate):
        links["a"].upload(honest(holders, job_id, "a"))
    links["b"].upload(honest(holders, job_id, "b"))
    links["c"].upload(honest(holders, job_id, "c"))
    secrets = {name: holder.require() for name, holder in holders.items()}
    assert len(check_over_links(links, secrets, job_id, 1, SIZE)) == 2  # the sum is checked before it is stored
    wait_for(lambda: coordinator.call(lambda: coordinator.server.jobs.job(job_id).latest_version()) == 1, 10,
             what="aggregation")
    total, weight = holders["b"].require().decrypt(links["b"].download(job_id, 1).data, SIZE)
    expected = sum(delta(n) * w for n, w in WEIGHTS.items())
    assert weight == sum(WEIGHTS.values())
    assert np.abs(total / weight - expected / weight).max() < 1e-6


def test_key_relay_refusals(live: Live, tmp_path: Path) -> None:
    coordinator, job_id, links, holders = live.coordinator, live.job_id, live.links, live.holders
    secret = holders["a"].require()
    with pytest.raises(PermissionDenied, match="not the key dealer"):
        links["b"].publish_context(job_id, secret.public_bytes(), secret.key_id)
    with pytest.raises(DuplicateUpdate):
        links["a"].publish_context(job_id, secret.public_bytes(), secret.key_id)
    with pytest.raises(DuplicateUpdate, match="already has the key"):
        links["a"].share_key(job_id, "b", b"sealed")
    # A second job whose dealer tries to publish its private context: refused, nothing stored.
    admin = AdminClient(coordinator.target)
    second = admin.create_job(_job(tmp_path))
    dealer = KeyHolder(links["c"], HE.params(), second)
    assert links["c"].join(second, 30, 4, SIZE, dealer.public_key).deal_keys
    private = SecretContext.create(HE.params())
    with pytest.raises(InvalidUpdate, match="secret key"):
        links["c"].publish_context(second, private.secret_bytes(), private.key_id)
    with pytest.raises(PreconditionFailed, match="public context"):
        links["c"].share_key(second, "c", b"sealed")
    with pytest.raises(PreconditionFailed, match="encrypted"):
        admin.export(job_id, tmp_path / "p.safetensors")
    admin.close()
    assert coordinator.call(lambda: coordinator.server.jobs.job(second).keys.context) is None
    digest = hashlib.sha256(private.secret_bytes()).hexdigest()
    assert digest not in (tmp_path / "coord" / "coordinator.sqlite").read_bytes().hex()


def test_a_restarted_key_holder_rejoins_with_the_keys_it_kept(tmp_path: Path) -> None:
    """A daemon restart rebuilds its KeyHolder: from its state directory it is the same holder (same exchange key,
    the job's secret), so its re-join is accepted and it can decrypt at once; without the directory the
    coordinator refuses a holder that comes back under a new exchange key."""
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(_job(tmp_path))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in WEIGHTS}
        states = {n: tmp_path / f"state-{n}" for n in WEIGHTS}
        holders = {n: KeyHolder(link, HE.params(), job_id, states[n]) for n, link in links.items()}
        for name, link in links.items():
            holders[name].joined(name, link.join(job_id, 30, 4, SIZE, holders[name].public_key).deal_keys)
        holders["a"].refresh()
        holders["b"].refresh()
        for name in ("a", "b"):
            stored = key_dir(states[name], job_id)
            assert {p.name: p.stat().st_mode & 0o777 for p in stored.iterdir()} == {EXCHANGE_FILE: 0o600,
                                                                                    SECRET_FILE: 0o600}
        restarted = KeyHolder(links["b"], HE.params(), job_id, states["b"])
        assert restarted.public_key == holders["b"].public_key and restarted.secret is not None
        info = links["b"].join(job_id, 30, 4, SIZE, restarted.public_key)
        restarted.joined("b", info.deal_keys)
        assert not info.deal_keys and restarted.require().key_id == holders["a"].require().key_id
        ciphertext = holders["a"].require().encrypt(np.ones(SIZE), 1)
        np.testing.assert_allclose(restarted.require().decrypt(ciphertext, SIZE)[0], np.ones(SIZE), atol=1e-6)
        with pytest.raises(InvalidUpdate, match="another exchange key"):
            links["b"].join(job_id, 30, 4, SIZE, KeyHolder(links["b"], HE.params(), job_id).public_key)
        for link in links.values():
            link.close()
        admin.close()


def test_a_key_holders_long_poll_returns_when_a_member_needs_the_key(tmp_path: Path) -> None:
    """The dealer's own task stays WAIT while members join, so its long-poll must return when one of them
    registers an exchange key (to seal the job key for it), not at the poll's timeout."""
    wait_s = 60.0
    with LiveCoordinator(tmp_path / "coord") as coordinator:
        admin = AdminClient(coordinator.target)
        job_id = admin.create_job(_job(tmp_path))
        links = {n: GrpcLink(coordinator.target, n, give_up_after_s=5) for n in ("a", "b")}
        holders = {n: KeyHolder(link, HE.params(), job_id) for n, link in links.items()}
        holders["a"].joined("a", links["a"].join(job_id, 30, 4, SIZE, holders["a"].public_key).deal_keys)
        holders["a"].refresh()
        with ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            poll = pool.submit(links["a"].get_task, job_id, wait_s)
            time.sleep(0.5)  # the poll is waiting on the coordinator
            assert not poll.done()
            holders["b"].joined("b", links["b"].join(job_id, 30, 4, SIZE, holders["b"].public_key).deal_keys)
            task = poll.result()
            assert task.kind is TaskKind.WAIT and time.monotonic() - started < wait_s / 2
        holders["a"].refresh()  # seals the key for b
        holders["b"].refresh()
        assert holders["b"].require().key_id == holders["a"].require().key_id
        for link in links.values():
            link.close()
        admin.close()
