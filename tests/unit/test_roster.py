"""``coordinator.roster.Roster`` as a plain object on a real SQLite file: who may join, with what counts, what a
re-join keeps, who counts as online, rejection streaks and quarantine, release, and restore after a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fedprompt.coordinator.roster import MAX_EXAMPLES, Roster
from fedprompt.coordinator.store import MemberState, Store
from fedprompt.errors import InvalidRequest, NotEnrolled, NotFound, PreconditionFailed

JOB = "job-1"
OFFLINE_AFTER_S = 60.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "state.sqlite")
    yield store
    store.close()


def roster(store: Store, quarantine_after: int = 2, allowed: tuple[str, ...] = ("*",)) -> Roster:
    return Roster(JOB, allowed, store, OFFLINE_AFTER_S, quarantine_after)


def stored_states(store: Store) -> dict[str, MemberState]:
    return {m.participant_id: m.state for m in store.members(JOB)}


def test_only_listed_identities_may_join_unless_the_list_admits_any(store: Store) -> None:
    listed = roster(store, allowed=("participant:a", "participant:b"))
    listed.check_allowed("participant:a")
    listed.check_allowed("participant:b")
    with pytest.raises(NotEnrolled, match="participant:c is not on the allow-list of job job-1"):
        listed.check_allowed("participant:c")
    roster(store, allowed=("participant:a", "*")).check_allowed("participant:c")


@pytest.mark.parametrize(("num_train", "num_test", "key"), [
    (0, 0, "num_train_examples"), (MAX_EXAMPLES + 1, 0, "num_train_examples"),
    (1, -1, "num_test_examples"), (1, MAX_EXAMPLES + 1, "num_test_examples"),
])
def test_implausible_example_counts_are_refused_naming_the_field(num_train: int, num_test: int, key: str) -> None:
    with pytest.raises(InvalidRequest, match=key):
        Roster.check_counts(num_train, num_test)


def test_the_extreme_plausible_counts_are_accepted() -> None:
    Roster.check_counts(1, 0)
    Roster.check_counts(MAX_EXAMPLES, MAX_EXAMPLES)


def test_join_writes_through_and_the_first_member_is_the_initialiser(store: Store) -> None:
    members = roster(store)
    first = members.join("a", 10, 5, now=100.0)
    members.join("b", 20, 6, now=101.0)
    assert members.initialiser == "a"
    assert (first.num_train, first.num_test, first.joined_at, first.last_seen, first.state) == (
        10, 5, 100.0, 100.0, MemberState.ACTIVE)
    assert store.members(JOB) == [members.members["a"], members.members["b"]]
    assert members.evaluated == {"a": set(), "b": set()} and members.with_budget() == 2


def test_a_rejoin_updates_the_counts_and_keeps_the_join_time_and_the_evaluations(store: Store) -> None:
    members = roster(store)
    members.join("a", 10, 5, now=100.0)
    members.join("b", 10, 5, now=100.0)
    members.mark_evaluated("a", 0)
    again = members.join("a", 30, 7, now=200.0)
    assert (again.num_train, again.num_test, again.joined_at, again.last_seen) == (30, 7, 100.0, 200.0)
    assert members.evaluated_on("a", 0) and not members.evaluated_on("a", 1) and not members.evaluated_on("b", 0)
    assert members.initialiser == "a"
    assert store.members(JOB)[0] == again


@pytest.mark.parametrize(("before", "after"), [
    (MemberState.EXHAUSTED, MemberState.EXHAUSTED),  # a spent privacy budget never resets
    (MemberState.QUARANTINED, MemberState.QUARANTINED),  # only an admin lifts a quarantine
    (MemberState.REVOKED, MemberState.ACTIVE),  # an expelled member joins again with a valid identity
    (MemberState.ACTIVE, MemberState.ACTIVE),
])
def test_a_rejoin_keeps_exhausted_and_quarantined_and_readmits_revoked(store: Store, before: MemberState, after: MemberState) -> None:
    members = roster(store)
    members.join("a", 10, 5, now=100.0)
    members.set_state("a", before)
    assert members.join("a", 10, 5, now=200.0).state is after
    assert stored_states(store) == {"a": after}


def test_touch_refuses_unknown_and_revoked_members_and_marks_the_others_seen(store: Store) -> None:
    members = roster(store)
    with pytest.raises(NotEnrolled, match="ghost has not joined job job-1"):
        members.touch("ghost", 100.0)
    members.join("a", 10, 5, now=100.0)
    members.join("q", 10, 5, now=100.0)
    members.set_state("q", MemberState.QUARANTINED)
    assert members.touch("a", 150.0).participant_id == "a"
    assert members.members["a"].last_seen == 150.0
    members.touch("q", 150.0)  # a quarantined member is still a member: it may call, it is not selected
    assert members.members["q"].last_seen == 150.0
    members.set_state("a", MemberState.REVOKED)
    with pytest.raises(NotEnrolled):
        members.touch("a", 160.0)
    assert members.members["a"].last_seen == 150.0


def test_online_is_the_active_members_seen_within_the_cutoff_inclusive_and_sorted(store: Store) -> None:
    members = roster(store)
    for name, seen in (("c", 100.0), ("a", 100.0), ("b", 90.0), ("q", 100.0), ("x", 100.0)):
        members.join(name, 10, 5, now=seen)
    members.set_state("q", MemberState.QUARANTINED)
    members.set_state("x", MemberState.EXHAUSTED)
    assert members.online(100.0) == ["a", "b", "c"]
    assert members.online(90.0 + OFFLINE_AFTER_S) == ["a", "b", "c"]  # b seen exactly offline_after_s ago
    assert members.online(90.0 + OFFLINE_AFTER_S + 0.001) == ["a", "c"]
    assert members.online(100.0 + OFFLINE_AFTER_S + 0.001) == []
    assert members.with_budget() == 4  # a quarantine is no end of budget; x's budget is spent


def test_rejections_build_a_streak_that_an_acceptance_resets(store: Store) -> None:
    members = roster(store, quarantine_after=3)
    for name in "abc":
        members.join(name, 10, 5, now=100.0)
    assert members.record_verdict(accepted=["a", "b"], rejected=["c"]) == []
    assert members.record_verdict(accepted=["a"], rejected=["b", "c"]) == []
    assert members.streaks == {"a": 0, "b": 1, "c": 2}
    assert members.record_verdict(accepted=["c"], rejected=["b"]) == []
    assert members.streaks == {"a": 0, "b": 2, "c": 0}
    assert members.quarantined() == ()


def test_the_limit_th_consecutive_rejection_quarantines_an_active_member_once(store: Store) -> None:
    members = roster(store, quarantine_after=2)
    for name in "abcx":
        members.join(name, 10, 5, now=100.0)
    members.set_state("x", MemberState.EXHAUSTED)
    assert members.record_verdict(accepted=["a"], rejected=["c", "b", "x"]) == []
    assert members.record_verdict(accepted=["a"], rejected=["c", "b", "x"]) == ["c", "b"]
    assert members.quarantined() == ("b", "c")
    assert stored_states(store) == {"a": MemberState.ACTIVE, "b": MemberState.QUARANTINED,
                                    "c": MemberState.QUARANTINED, "x": MemberState.EXHAUSTED}
    assert members.record_verdict(accepted=[], rejected=["c"]) == []  # already quarantined: not again
    assert members.streaks["c"] == 3 and members.online(100.0) == ["a"]


def test_limit_zero_never_quarantines(store: Store) -> None:
    members = roster(store, quarantine_after=0)
    members.join("a", 10, 5, now=100.0)
    for _ in range(10):
        assert members.record_verdict(accepted=[], rejected=["a"]) == []
    assert members.streaks["a"] == 10 and members.quarantined() == ()
    assert stored_states(store) == {"a": MemberState.ACTIVE}


def test_release_lifts_a_quarantine_with_a_fresh_streak(store: Store) -> None:
    members = roster(store, quarantine_after=1)
    members.join("a", 10, 5, now=100.0)
    members.join("b", 10, 5, now=100.0)
    assert members.record_verdict(accepted=["b"], rejected=["a"]) == ["a"]
    with pytest.raises(NotFound, match="'ghost' is not a member of job job-1"):
        members.release("ghost")
    with pytest.raises(PreconditionFailed, match="b is not quarantined \\(state active\\)"):
        members.release("b")
    assert members.release("a") is MemberState.ACTIVE
    assert members.streaks["a"] == 0 and members.quarantined() == () and members.online(100.0) == ["a", "b"]
    assert stored_states(store) == {"a": MemberState.ACTIVE, "b": MemberState.ACTIVE}
    assert members.record_verdict(accepted=[], rejected=["a"]) == ["a"]  # one more rejection: the limit again


def test_restore_rebuilds_from_the_store_with_a_grace_period_for_liveness(store: Store) -> None:
    before = roster(store, quarantine_after=2)
    before.join("a", 10, 5, now=100.0)
    before.join("b", 20, 5, now=110.0)
    before.join("c", 30, 5, now=120.0)
    before.set_state("c", MemberState.QUARANTINED)
    after = roster(store, quarantine_after=2)
    after.restore(store.members(JOB), {"b": {0, 1}}, {"a": 1}, now=1000.0)
    assert after.initialiser == "a"
    assert {p: (m.num_train, m.joined_at, m.last_seen, m.state) for p, m in after.members.items()} == {
        "a": (10, 100.0, 1000.0, MemberState.ACTIVE), "b": (20, 110.0, 1000.0, MemberState.ACTIVE),
        "c": (30, 120.0, 1000.0, MemberState.QUARANTINED)}
    assert after.online(1000.0 + OFFLINE_AFTER_S) == ["a", "b"]  # nobody is offline until the grace has passed
    assert after.online(1000.0 + OFFLINE_AFTER_S + 1) == []
    assert after.evaluated == {"a": set(), "b": {0, 1}, "c": set()}
    assert after.record_verdict(accepted=[], rejected=["a"]) == ["a"]  # the replayed streak counts


def test_restore_of_no_members_leaves_no_initialiser(store: Store) -> None:
    empty = roster(store)
    empty.restore([], {}, {}, now=1000.0)
    assert empty.initialiser is None and empty.members == {} and empty.online(1000.0) == []
