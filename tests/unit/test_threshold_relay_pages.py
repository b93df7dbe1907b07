"""The threshold key relay in pages: at n = 50 and 100 its state for one member (64 KB per public key share and
per sealed sub-share, 6.5 MB and 13 MB) is served as ``GetThresholdKeys`` responses each under the 4 MiB gRPC
message limit, and the pages join into the whole state; a member's dealing (6.5 MB at n = 100) goes in batches
that each fit one.  Real public key shares of real member secrets, real attestations under a throwaway CA,
sub-shares sealed for the member with X25519 + AES-GCM."""

from __future__ import annotations

import pytest

from fedprompt.coordinator.threshold import ThresholdRelay
from fedprompt.crypto.attest import KeyCredentials, digest
from fedprompt.crypto.pki import CertificateAuthority
from fedprompt.crypto.sealing import GROUP_CONTRIBUTION_BYTES, new_exchange_key, public_bytes, seal
from fedprompt.crypto.threshold import Member, ThresholdParams, crp
from fedprompt.errors import DuplicateUpdate, InvalidUpdate
from fedprompt.protocol import ThresholdKeyState, all_pages, deal_batches
from fedprompt.wire import serde

JOB = "job-pages"
GRPC_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> list[KeyCredentials]:
    root = tmp_path_factory.mktemp("pages")
    ca = CertificateAuthority.init(root / "ca")
    out = []
    for k in range(100):
        key, cert = ca.issue(f"participant:m{k:03d}", root / f"m{k:03d}")
        out.append(KeyCredentials.from_files(ca.ca_cert_path, cert, key))
    return out


def _relay(members: int, signers: list[KeyCredentials]) -> tuple[ThresholdRelay, str]:
    """A relay after every member registered, published its share and dealt; returns it and the member looking."""
    names = [f"participant:m{k:03d}" for k in range(members)]
    relay = ThresholdRelay(JOB, names, ThresholdParams(members=members))
    exchange = {who: new_exchange_key() for who in names}
    for who, signer in zip(names, signers, strict=False):
        key = public_bytes(exchange[who])
        relay.register(who, key, signer.signer.sign(JOB, "exchange", (digest(key),)))
    a = crp(relay.context.ring, relay.seed)
    for index, (who, signer) in enumerate(zip(names, signers, strict=False), start=1):
        share = Member(relay.params, relay.context.ring, index).public_share(a).astype("uint64").tobytes()
        relay.publish_share(who, share, signer.signer.sign(JOB, "key-share", (digest(share),)))
    viewer = names[0]
    dealt = bytes(GROUP_CONTRIBUTION_BYTES + 15 + relay.share_bytes)  # a dealt share's size (``Member.deal``)
    for dealer in names:
        to_viewer = seal(dealt, sender=exchange[dealer], recipient_public=public_bytes(exchange[viewer]),
                         job_id=JOB, sender_id=dealer, recipient_id=viewer) if dealer != viewer else b""
        relay.deal(dealer, {who: to_viewer or b"x" for who in names if who != dealer})
    return relay, viewer


@pytest.mark.parametrize("members", [50, 100])
def test_every_page_of_the_key_relay_fits_a_grpc_message_and_the_pages_join_into_the_whole_state(
        members: int, signers: list[KeyCredentials]) -> None:
    relay, viewer = _relay(members, signers)
    crl = b"-----BEGIN X509 CRL-----" + bytes(2000)
    sizes: list[int] = []

    def page(k: int) -> ThresholdKeyState:
        response = serde.threshold_keys_to_pb(relay.state_for(viewer, crl, k))  # what GetThresholdKeys returns
        sizes.append(response.ByteSize())
        return serde.threshold_keys_from_pb(response)

    state = all_pages(page)
    assert max(sizes) < GRPC_LIMIT and sum(sizes) > 1.4 * GRPC_LIMIT * (members / 50)  # paged, not trimmed
    assert [m for m, _, _ in state.exchange] == relay.members and [m for m, _, _ in state.shares] == relay.members
    assert sorted(d for d, _ in state.dealt) == [m for m in relay.members if m != viewer]
    assert state.dealt_by_caller and state.crl == crl
    assert dict((m, (k, a)) for m, k, a in state.shares) == relay.shares
    with pytest.raises(InvalidUpdate, match="pages"):
        relay.state_for(viewer, crl, len(sizes))


def test_an_item_published_between_two_pages_comes_last_and_pages_already_cut_keep_theirs(
        signers: list[KeyCredentials]) -> None:
    names = [f"participant:m{k:03d}" for k in range(3)]
    relay = ThresholdRelay(JOB, names, ThresholdParams(members=3))
    keys = {who: public_bytes(new_exchange_key()) for who in names}
    relay.register(names[2], keys[names[2]])
    relay.register(names[0], keys[names[0]])
    first = relay.state_for(names[1], page=0, page_bytes=1)
    relay.register(names[1], keys[names[1]])  # sorts first, arrives last
    assert relay.state_for(names[1], page=0, page_bytes=1) == first and first.next_page == 1
    assert [m for m, _, _ in relay.state_for(names[1], page=2, page_bytes=1).exchange] == [names[1]]
    assert all_pages(lambda k: relay.state_for(names[1], page=k, page_bytes=1)).exchange == tuple(
        (m, keys[m], b"") for m in (names[2], names[0], names[1]))


def test_a_dealing_at_n_100_goes_in_batches_that_each_fit_a_grpc_message() -> None:
    """99 sealed sub-shares (6.5 MB) in ``DealShares`` requests under the limit; the dealing counts once complete,
    a batch sent again keeps the first blobs, and a complete dealing is refused."""
    names = [f"participant:m{k:03d}" for k in range(100)]
    relay = ThresholdRelay(JOB, names, ThresholdParams(members=100))
    dealer, keys = new_exchange_key(), {who: new_exchange_key() for who in names[1:]}
    dealt = bytes(GROUP_CONTRIBUTION_BYTES + 15 + relay.share_bytes)
    sealed = {who: seal(dealt, sender=dealer, recipient_public=public_bytes(key), job_id=JOB, sender_id=names[0],
                        recipient_id=who) for who, key in keys.items()}
    batches = deal_batches(sealed)
    requests = [serde.dealing_to_pb(JOB, batch) for batch in batches]
    assert len(batches) > 1 and max(r.ByteSize() for r in requests) < GRPC_LIMIT
    for request in requests[:-1]:
        relay.deal(names[0], serde.dealing_from_pb(request))
    assert not relay.state_for(names[0]).dealt_by_caller
    again = {who: b"resealed" for who in batches[0]}
    assert relay.deal(names[0], again) == {} and relay.pending[names[0]] == {
        who: blob for batch in batches[:-1] for who, blob in batch.items()}
    relay.deal(names[0], serde.dealing_from_pb(requests[-1]))
    assert relay.state_for(names[0]).dealt_by_caller and relay.dealt[names[0]] == sealed
    assert relay.state_for(names[1]).dealt == ((names[0], sealed[names[1]]),)
    with pytest.raises(DuplicateUpdate):
        relay.deal(names[0], batches[0])
