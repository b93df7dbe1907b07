"""Record-level DP at a participant and the participant-level ledger: real Opacus (DP-SGD, and the reference
for our accountant), real files, real SQLite."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule, PrivacyEngine
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import get_noise_multiplier
from opacus.optimizers import DPOptimizer
from torch.utils.data import DataLoader, TensorDataset

from fedprompt.config import DPSection, JobConfig, dump_toml, parse_toml
from fedprompt.coordinator.aggregation import Contribution, FedAvg, UniformWeights
from fedprompt.coordinator.jobs import JobManager
from fedprompt.coordinator.privacy import ParticipantLedger
from fedprompt.coordinator.recovery import resume_jobs
from fedprompt.coordinator.store import Store
from fedprompt.data.datasets import label_indices
from fedprompt.errors import ConfigError, FedPromptError, InvalidUpdate
from fedprompt.models import build_classifier
from fedprompt.participant.dp import (
    RecordAccountant,
    RecordPlan,
    SitePrivacy,
    noise_share,
    plan_record_dp,
    train_local_dp,
)
from fedprompt.participant.train import GradientLearner, backward_in_parts
from tests.support import tiny_job, toy_examples

pytestmark = [pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha"),
              pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing")]


def dp_job(model_dir: Path, **dp: object) -> JobConfig:
    return dataclasses.replace(tiny_job(model_dir, rounds=3), dp=DPSection(enabled=True, **dp))  # type: ignore[arg-type]


@pytest.mark.parametrize("line, key", [
    ("noise_multiplier = -0.5", "dp.noise_multiplier"),
    ("delta = 1.0", "dp.delta"),
    ("delta = -0.1", "dp.delta"),
    ("epsilon = 0", "dp.epsilon"),
    ("epsilon = -3", "dp.epsilon"),
    ("max_grad_norm = 0", "dp.max_grad_norm"),
    ("update_clip = -1.0", "dp.update_clip"),
    ("participant_noise_multiplier = -1", "dp.participant_noise_multiplier"),
    ("participant_epsilon = 0", "dp.participant_epsilon"),
    ("participant_delta = 1", "dp.participant_delta"),
    ("accountant = 'gdp2'", "dp.accountant"),
    ("epsilon = inf", "dp.epsilon"),
    ("budget = 3", "dp.budget"),
])
def test_bad_dp_config_fails_at_load_naming_the_key(line: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: ") as info:
        parse_toml(f"[dp]\nenabled = true\n{line}\n", JobConfig, "job.toml")
    assert "must" in str(info.value) or "unknown key" in str(info.value)


def test_dp_config_round_trips_through_toml() -> None:
    config = JobConfig(dp=DPSection(enabled=True, epsilon=3.0, participant_noise_multiplier=1.1))
    assert parse_toml(dump_toml(config), JobConfig) == config


@pytest.mark.parametrize("physical", [32, 1])
def test_dp_sgd_epsilon_equals_opacus_own_computation(tiny_encoder_dir: Path, physical: int) -> None:
    """Our accountant after real DP-SGD steps == Opacus's RDP analysis == a PrivacyEngine run of the same steps,
    also when each Poisson batch runs as one-example passes (``physical_batch_size`` 1): a batch computed in
    parts is still one batch to the accountant, at the planned sample rate."""
    base = dp_job(tiny_encoder_dir, noise_multiplier=1.1)
    config = dataclasses.replace(base, train=dataclasses.replace(base.train, physical_batch_size=physical))
    examples = toy_examples(40, seed=1)
    labels = label_indices(examples, config.task.label_names)
    model = build_classifier(config)
    plan = plan_record_dp(config.dp, config.train, config.job.rounds, len(examples))
    assert (plan.sample_rate, plan.delta, plan.noise_multiplier) == (0.1, 1 / 400, 1.1)
    accountant = RecordAccountant("rdp", None)
    before = model.get_vector()
    for _ in range(3):
        result = train_local_dp(model, examples, labels, config.train, plan, accountant)
        assert result.steps == plan.steps_per_round == 2
    assert not np.allclose(before, model.get_vector())
    assert [(sigma, rate) for sigma, rate, _ in accountant.accountant.history] == [(1.1, 0.1)]
    ours = accountant.epsilon(plan.delta)

    steps = 3 * plan.steps_per_round
    rdp = rdp_analysis.compute_rdp(q=0.1, noise_multiplier=1.1, steps=steps, orders=RDPAccountant.DEFAULT_ALPHAS)
    analytic, _ = rdp_analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=plan.delta)
    assert ours == pytest.approx(float(analytic), rel=1e-12)

    engine = PrivacyEngine(accountant="rdp")
    net = torch.nn.Linear(3, 2)
    loader = DataLoader(TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,))), batch_size=4)
    net, optimiser, loader = engine.make_private(module=net, optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
                                                 data_loader=loader, noise_multiplier=1.1, max_grad_norm=1.0)
    batches = iter(loader)
    for _ in range(steps):
        x, y = next(batches)
        optimiser.zero_grad()
        if len(x):
            torch.nn.functional.cross_entropy(net(x), y).backward()
        else:
            for p in net.parameters():
                p.grad_sample = torch.zeros((0, *p.shape))
        optimiser.step()
    assert ours == pytest.approx(engine.get_epsilon(plan.delta), rel=1e-12)


def test_physical_batches_give_the_batch_gradient_and_the_same_per_example_gradients(tiny_encoder_dir: Path) -> None:
    """A batch of 10 in passes of 3 (3 + 3 + 3 + 1, each padded on its own) gives the same plain gradient as one
    pass and, through Opacus, the same per-example gradients in the same order: ``train.physical_batch_size``
    bounds memory and changes nothing else (dropout off, so both runs see the same function)."""
    config = dp_job(tiny_encoder_dir)
    examples = toy_examples(12, seed=2)
    y = torch.tensor(label_indices(examples, config.task.label_names))
    indices = [7, 0, 3, 11, 5, 2, 9, 1, 8, 4]

    def plain(physical: int) -> tuple[list[torch.Tensor], float]:
        model = build_classifier(config)
        model.eval()
        loss = backward_in_parts(model, model, examples, y, indices, physical, scale=1 / len(indices))
        return [p.grad.clone() for p in model.trainable_parameters()], loss  # type: ignore[union-attr]

    def per_example(physical: int) -> list[torch.Tensor]:
        model = build_classifier(config)
        wrapped = GradSampleModule(model, loss_reduction="sum")
        wrapped.train()  # Opacus records activations in training mode only: dropout off instead
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        backward_in_parts(model, wrapped, examples, y, indices, physical, scale=1.0)
        stacked = [torch.cat(g) if isinstance(g := p.grad_sample, list) else g  # type: ignore[attr-defined]
                   for p in model.trainable_parameters()]  # Opacus keeps one tensor per pass
        wrapped._close()
        return stacked

    (whole, whole_loss), (parts, parts_loss) = plain(64), plain(3)
    assert parts_loss == pytest.approx(whole_loss, rel=1e-5)
    for a, b in zip(whole, parts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    one, split = per_example(64), per_example(3)
    assert all(g.shape[0] == len(indices) for g in split)
    for a, b in zip(one, split, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    for p_grad, g in zip(whole, one, strict=True):  # the per-example gradients add up to the batch's
        torch.testing.assert_close(g.sum(0) / len(indices), p_grad, rtol=1e-4, atol=1e-6)


def test_dp_sgd_in_passes_holds_one_pass_of_per_example_gradients_and_takes_the_batch_step(
        tiny_encoder_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Poisson batch of 10 in passes of 3 hands Adam the same clipped gradient sum as one pass, while Opacus
    clips each pass as it ends (never more than 3 examples' gradients held) and the accountant steps once per
    batch: ``train.physical_batch_size`` bounds the per-example gradients' memory and changes nothing else.
    Noise-free (sigma 0) and every example in every batch (rate 1), so both runs must agree."""
    config = dp_job(tiny_encoder_dir)
    examples = toy_examples(10, seed=3)
    labels = label_indices(examples, config.task.label_names)
    plan = RecordPlan(noise_multiplier=0.0, max_grad_norm=0.05, sample_rate=1.0, expected_batch_size=10,
                      steps_per_round=2, delta=1e-3, budget=100.0, accountant="rdp")
    clipped_rows: list[int] = []
    handed: list[list[torch.Tensor]] = []
    clip, scale = DPOptimizer.clip_and_accumulate, DPOptimizer.scale_grad

    def spy_clip(self: DPOptimizer) -> None:
        clipped_rows.append(max(len(g) for g in self.grad_samples))
        clip(self)

    def spy_scale(self: DPOptimizer) -> None:
        scale(self)
        handed.append([p.grad.detach().clone() for p in self.params])

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy_clip)
    monkeypatch.setattr(DPOptimizer, "scale_grad", spy_scale)

    def run(physical: int) -> tuple[list[int], list[list[torch.Tensor]], list[tuple[float, float, int]]]:
        clipped_rows.clear()
        handed.clear()
        model = build_classifier(config)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        accountant = RecordAccountant("rdp", None)
        train_local_dp(model, examples, labels, dataclasses.replace(config.train, physical_batch_size=physical),
                       plan, accountant)
        return list(clipped_rows), list(handed), list(accountant.accountant.history)

    whole_rows, whole, whole_history = run(64)
    part_rows, parts, part_history = run(3)
    assert whole_rows == [10, 10]
    assert part_rows == [3, 3, 3, 1] * 2
    assert whole_history == part_history == [(0.0, 1.0, 2)]
    assert len(whole) == len(parts) == 2
    for step_whole, step_parts in zip(whole, parts, strict=True):
        assert any(g.abs().sum() > 0 for g in step_whole)
        for a, b in zip(step_whole, step_parts, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_calibrated_noise_is_opacus_and_spends_the_budget_over_the_planned_rounds(tiny_encoder_dir: Path) -> None:
    config = dp_job(tiny_encoder_dir, epsilon=3.0)
    plan = plan_record_dp(config.dp, config.train, config.job.rounds, 40)
    assert plan.noise_multiplier == get_noise_multiplier(target_epsilon=3.0, target_delta=1 / 400, sample_rate=0.1,
                                                         steps=6, accountant="rdp")
    accountant = RecordAccountant("rdp", None)
    for _ in range(6):
        accountant.accountant.step(noise_multiplier=plan.noise_multiplier, sample_rate=0.1)
    assert 2.9 < accountant.epsilon(plan.delta) <= 3.0


def test_prv_accountant_epsilon_equals_opacus() -> None:
    """Same grid, same truncation, same composition; the truncated PRV's mean is integrated to ~1e-16 here and
    to ~4e-13 by Opacus, which over 6 steps moves epsilon by ~2e-12 (far inside the 0.01 ``eps_error``)."""
    ours = RecordAccountant("prv", None)
    reference = PRVAccountant()
    for _ in range(6):
        ours.accountant.step(noise_multiplier=1.0, sample_rate=0.1)
        reference.step(noise_multiplier=1.0, sample_rate=0.1)
    assert ours.epsilon(1e-3) == pytest.approx(reference.get_epsilon(1e-3, eps_error=0.01), rel=1e-10)
    assert ours.epsilon(1e-3) > 0


def test_accountant_state_survives_a_restart_and_refuses_past_the_budget(tiny_encoder_dir: Path,
                                                                          tmp_path: Path) -> None:
    config = dp_job(tiny_encoder_dir, epsilon=3.0, noise_multiplier=1.0)
    examples = toy_examples(8, seed=2)
    labels = label_indices(examples, config.task.label_names)
    ledger = tmp_path / "dp" / "job.json"
    first = SitePrivacy(config, len(examples), ledger)
    assert first.epsilon() == 0.0 and first.refusal() == ""
    learner = GradientLearner(build_classifier(config), config.train)
    first.train(learner, learner.initial_vector(), examples, labels)
    spent = first.epsilon()
    assert 2.0 < spent < 3.0 and json.loads(ledger.read_text())["history"] == [[1.0, 0.5, 2]]

    restarted = SitePrivacy(config, len(examples), ledger)
    assert restarted.epsilon() == spent
    assert "record-level privacy budget" in restarted.refusal()
    report = restarted.report("job", 2, restarted.refusal())
    assert report.declined and report.epsilon == spent and report.delta == 1 / 80


def test_unreadable_ledger_fails_closed(tmp_path: Path) -> None:
    ledger = tmp_path / "job.json"
    ledger.write_text('{"history": "garbage"}')
    with pytest.raises(FedPromptError, match="refusing to train"):
        RecordAccountant("rdp", ledger)


def test_noise_share_clips_and_m_shares_sum_to_the_full_noise() -> None:
    rng = np.random.default_rng(0)
    big = np.full(1000, 3.0, np.float32)
    clipped = noise_share(big, clip=2.0, noise_multiplier=0.0, shares=4, rng=rng)
    assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-5)
    small = np.full(1000, 1e-3, np.float32)
    np.testing.assert_allclose(noise_share(small, 2.0, 0.0, 4, rng), small, rtol=1e-6)
    total = sum(noise_share(np.zeros(200_000, np.float32), 2.0, 1.5, 4, rng) for _ in range(4))
    assert np.std(total) == pytest.approx(1.5 * 2.0, rel=0.01)


def test_participant_ledger_matches_opacus_and_persists(tmp_path: Path) -> None:
    dp = DPSection(enabled=True, participant_noise_multiplier=1.2, participant_epsilon=10.0, participant_delta=1e-3)
    store = Store(tmp_path / "state.sqlite")
    ledger = ParticipantLedger("job", dp, store)
    assert ledger.epsilon() == 0.0
    rates = [0.5, 0.5, 0.25]
    reference = RDPAccountant()
    for round_, q in enumerate(rates, start=1):
        ledger.record(round_, q)
        reference.step(noise_multiplier=1.2, sample_rate=q)
    assert ledger.epsilon() == pytest.approx(reference.get_epsilon(1e-3), rel=1e-12)
    reloaded = ParticipantLedger("job", dp, store)
    assert reloaded.epsilon() == ledger.epsilon()
    assert json.loads(store.accountant_state("job") or "") == {"mechanism": "rdp",
                                                                "history": [[1.2, 0.5, 2], [1.2, 0.25, 1]]}
    tight = dataclasses.replace(dp, participant_epsilon=ledger.epsilon() + 1e-6)
    assert "participant-level privacy budget reached" in ParticipantLedger("job", tight, store).refusal(0.5)
    assert ParticipantLedger("job", DPSection(enabled=True), store).epsilon() == float("inf")
    store.close()


def test_participant_ledger_migrates_old_privacy_ledger_rows_once(tmp_path: Path) -> None:
    """A database written before ``privacy_accountants`` keeps one ``privacy_ledger`` row per round: the upgraded
    coordinator rebuilds the accountant from them, stores its state, and from then on reads only the state."""
    path = tmp_path / "state.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE privacy_ledger (job_id TEXT NOT NULL, round INTEGER NOT NULL, noise_multiplier REAL NOT "
                "NULL, sample_rate REAL NOT NULL, epsilon REAL NOT NULL, delta REAL NOT NULL, recorded_at REAL NOT "
                "NULL, PRIMARY KEY (job_id, round))")
    rows = [(2, 1.2, 0.5), (1, 1.2, 0.5), (3, 1.2, 0.25)]
    old.executemany("INSERT INTO privacy_ledger VALUES ('job', ?, ?, ?, 0, 1e-3, 0)", rows)
    old.commit()
    old.close()
    reference = RDPAccountant()
    for _, sigma, q in sorted(rows):
        reference.step(noise_multiplier=sigma, sample_rate=q)
    dp = DPSection(enabled=True, participant_noise_multiplier=1.2, participant_epsilon=10.0, participant_delta=1e-3)
    store = Store(path)
    assert store.accountant_state("job") is None
    migrated = ParticipantLedger("job", dp, store)
    assert migrated.epsilon() == pytest.approx(reference.get_epsilon(1e-3), rel=1e-12) and migrated.epsilon() > 0
    assert json.loads(store.accountant_state("job") or "")["history"] == [[1.2, 0.5, 2], [1.2, 0.25, 1]]
    other = sqlite3.connect(path)
    other.execute("DELETE FROM privacy_ledger")
    other.commit()
    other.close()
    assert ParticipantLedger("job", dp, store).epsilon() == migrated.epsilon(), "the state row is read, not the rows"
    assert ParticipantLedger("other", dp, store).epsilon() == 0.0
    store.close()


@pytest.mark.parametrize("state", ["", "{not json", '{"mechanism": "rdp"}', '{"mechanism": "prv", "history": []}',
                                   '{"mechanism": "rdp", "history": [[1.0, 1.5, 1]]}'])
def test_unreadable_participant_ledger_fails_closed(tmp_path: Path, state: str) -> None:
    """An unreadable ledger never restarts at epsilon 0: it refuses every further round, with the reason."""
    store = Store(tmp_path / "state.sqlite")
    store.save_accountant_state("job", state)
    ledger = ParticipantLedger("job", DPSection(enabled=True, participant_noise_multiplier=1.0), store)
    assert "privacy ledger of job job is unreadable" in ledger.refusal(0.5)
    store.close()


def test_a_restart_with_an_unreadable_ledger_pauses_that_job_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite")
    jobs = JobManager(store)
    dp = DPSection(enabled=True, noise_multiplier=1.0, participant_noise_multiplier=1.0)
    private = jobs.create_job(dump_toml(dataclasses.replace(tiny_job(tmp_path, name="private"), dp=dp)))
    other = jobs.create_job(dump_toml(tiny_job(tmp_path, name="other")))
    for job_id in (private, other):
        jobs.job(job_id).start()
    store.save_accountant_state(private, "{not json")
    resumed = JobManager(store)
    assert sorted(resume_jobs(resumed)) == sorted([private, other])
    assert resumed.job(private).state.value == "paused" and "unreadable" in resumed.job(private).lifecycle.reason
    assert resumed.job(other).state.value == "running"
    store.close()


def test_uniform_weights_count_each_update_once_and_need_the_minimum() -> None:
    aggregator = UniformWeights(FedAvg(), min_updates=2)
    contributions = [Contribution("a", 100, np.ones(4, np.float32)), Contribution("b", 1, np.zeros(4, np.float32))]
    result = aggregator.aggregate(np.zeros(4, np.float32), contributions)
    np.testing.assert_allclose(result.vector, np.full(4, 0.5))
    with pytest.raises(InvalidUpdate, match="at least 2"):
        aggregator.aggregate(np.zeros(4, np.float32), contributions[:1])
