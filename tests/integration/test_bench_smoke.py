"""Every benchmark's smoke mode, run as a user runs it (``python -m fedprompt bench NAME --smoke --report F``):
it exits 0 in seconds and writes a report holding every key the README and the issues name, with its
provenance.  A bench that crashes or loses a key fails here, in ``make test``, instead of after a long run.

Key paths: ``a.b`` is key ``b`` of the dict under ``a``; ``rows[].x`` is key ``x`` of every element of the list
``rows`` (which must not be empty); ``runs[][].x`` the same, one list deeper."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedprompt.app.bench import BENCHES, pgserver

PROVENANCE = ("provenance.command", "provenance.commit", "provenance.dirty", "provenance.date", "provenance.machine")

REPORT_KEYS: dict[str, tuple[str, ...]] = {
    # issue 31's Must show: one row per method and backbone (and the best at epsilon 8) and a generation row, all
    # with one schema (null where a key is the other task's), the round trip and the targets
    "peft": (*(f"rows[].{key}" for key in (
                 "backbone", "method", "task", "accuracy", "majority_accuracy", "zero_shot_accuracy",
                 "exchanged_floats", "exchanged_over_plm", "upload_bytes_he", "seconds_per_round",
                 "participant_peak_rss_mb", "dp_epsilon", "exact_match_before", "exact_match_after",
                 "rouge_l_before", "rouge_l_after", "loss_before", "loss_after", "run")), "runs[].commit",
             "peft_roundtrip_max_abs_diff",
             "targets.best_smollm2_accuracy.met", "targets.best_smollm2_accuracy_dp_eps8.met",
             "targets.deep_or_lora_over_prompt_points.met", "targets.generation_rouge_l_gain.met",
             "targets.peft_roundtrip_max_abs_diff.met", "settings.sites", "settings.rounds",
             "settings.steps_per_site_round", "settings.train_size", "settings.test_size", "complete"),
    # issue 33's Must show: both engines on the same jobs, wall time, rounds, equal final metrics, Ray's speed-up
    "simulate-scale": ("runs[].name", "runs[].participants", "runs[].per_round", "runs[].rounds",
                       "runs[].inprocess_seconds", "runs[].ray_seconds", "runs[].ray_speedup", "runs[].ray_workers",
                       "runs[].final_accuracy", "runs[].equal_final_metrics", "runs[].equal_final_global", "cpus",
                       "settings.participants", "settings.synthetic_participants"),
    # issue 29's Must show, the README's robustness table and its notes
    "robust": ("rows[].defence", "rows[].he", "rows[].clean_accuracy_mean", "rows[].clean_accuracy_sd",
               "rows[].asr_mean", "rows[].asr_sd", "rows[].precision", "rows[].recall", "rows[].triggered_examples",
               "rows[].rejected_by_round", "rows[].poisoned_updates_accepted", "no_attack_asr_mean", "no_attack_accuracy_mean", "no_attack_asr_sd",
               "no_attack_accuracy_sd", "seeds", "fedprompt_reproduction", "gram_seconds",
               "plain_defence_seconds", "he_gram.upload_bytes", "he_gram.evaluation_key_bytes",
               "he_decisions_equal_plaintext", "best", "best_he", "targets", "settings.test_size",
               "settings.partition"),
    # README "Benchmarks": the federated table, the settings line and the notes under it (baselines, split, seconds)
    "federated": ("centralized_accuracy", "federated_iid_accuracy", "federated_dirichlet_accuracy", "iid_gap_points",
                  "dirichlet_gap_points", "majority_accuracy", "zero_shot_accuracy", "runs.centralized.seconds",
                  "runs.federated_iid.seconds", "runs.federated_dirichlet.seconds",
                  "runs.federated_iid.rounds[].bytes_up", "settings.sites", "settings.rounds",
                  "settings.steps_per_site_round", "settings.total_steps", "settings.dirichlet_alpha",
                  "settings.test_size", "settings.backbone"),
    # README "Differential privacy": the recipe x epsilon table, its setting line and the bullets under it
    "dp": ("dp_step_over_plain_step", "step_cost.plain_step_s", "step_cost.dp_step_s", "step_cost.plain_batch",
           "utility[].recipe", "utility[].batch_size", "utility[].steps", "utility[].lr", "utility[].epsilon",
           "utility[].accuracy", "utility[].delta", "utility[].noise_multiplier_max", "utility[].seconds",
           "majority_accuracy", "zero_shot_accuracy", "settings.sites", "settings.rounds", "settings.recipes.small",
           "settings.recipes.large", "settings.test_size", "settings.seed"),
    # README "Secure aggregation" and docs/he.md "Measured": the table's keys and the notes under them
    "he": ("plain_bytes", "cipher_bytes", "expansion_ratio", "security_bits", "encrypt_s", "aggregate_s_per_update",
           "decrypt_s", "max_abs_error", "secure_round_over_plain_round", "aggregation_1000.aggregate_bytes",
           "aggregation_1000.max_abs_error_of_sum", "aggregation_1000.rss_bytes_after_updates",
           "aggregation_1000.peak_memory_growth_bytes", "he_params", "rounds.plain_round_s", "rounds.secure_round_s",
           "rounds.settings.sites", "rounds.settings.steps"),
    # README "Prompt levels" and docs/levels.md "What it buys": the levels table, zero-shot, worst site, discovery
    "personal": ("rows[].levels", "rows[].mean_accuracy", "rows[].worst_accuracy", "details.global.zero_shot",
                 "details.global+expert.zero_shot", "details.global+expert+personal.zero_shot",
                 "details.global.worst_participant", "details.global+expert.worst_participant",
                 "details.global+expert+personal.worst_participant", "discovered_cohorts.assignment",
                 "discovered_cohorts.recovered", "discovered_cohorts.mean_accuracy",
                 "discovered_cohorts.worst_accuracy", "seconds.global", "seconds.global+expert",
                 "seconds.global+expert+personal", "seconds.discover", "settings.cohorts", "settings.alpha",
                 "settings.train_label_mix", "settings.train_per_site", "settings.test_per_site", "settings.rounds",
                 "settings.steps_per_site_round", "settings.batch_size", "settings.total_prompt_tokens",
                 "settings.tokens", "settings.backbone"),
    # load: the README's and docs/operations.md's load figures, and the bench docstring's issue keys plus settings
    "load": ("participants", "rounds_completed", "p50_round_s", "p95_round_s", "seconds_per_participant",
             "coordinator_peak_rss_mb", "errors", "settings.rounds", "settings.client_processes",
             "settings.vector_size", "settings.update_bytes"),
    # stalls: the bench docstring's measurements, the README's and docs/security.md's figures and limits
    "stalls": ("stalled_streams", "idle_connections", "identities", "waves", "rss_mb_before", "rss_mb_peak",
               "rss_mb_after", "rss_kib_per_connection", "status_p50_s", "status_p95_s", "status_max_s", "status_calls",
               "round_completed", "round_completed_while_stalled", "streams_closed_by_timeout", "streams_refused",
               "close_after_s_min", "close_after_s_max", "slots_freed", "connections_peak", "connections_after",
               "per_wave[].rss_mb_before", "per_wave[].rss_mb_peak", "per_wave[].rss_mb_after",
               "per_wave[].streams_closed_by_timeout", "per_wave[].status_max_s", "errors",
               "settings.upload_timeout_s", "settings.connection_idle_s", "settings.max_concurrent_uploads",
               "settings.mtls", "settings.error_messages"),
    # blackbox: the README's black-box table and notes (memory, queries, accuracy per round, targets, export time)
    "blackbox": ("runs[].mode", "runs[].aggregation", "runs[].he", "runs[].accuracy", "runs[].bytes_per_round",
                 "runs[].peak_rss_mb", "runs[].seconds", "majority_accuracy", "zero_shot_accuracy",
                 "memory[].mode", "memory[].aggregation", "memory[].participant_mb", "memory[].model_service_mb",
                 "model_queries_per_participant", "accuracy_by_round[].mode", "accuracy_by_round[].aggregation",
                 "accuracy_by_round[].accuracy", "scorer_export_seconds", "targets.accuracy_ratio_min",
                 "targets.peak_rss_ratio_max", "targets.bytes_per_round_max", "settings.sites", "settings.rounds",
                 "settings.test_size", "settings.gradient_steps", "settings.blackbox.intrinsic_dim",
                 "settings.blackbox.population", "settings.blackbox.local_iterations", "settings.blackbox.batch_size",
                 "settings.backbone", "settings.dataset", "settings.head"),
    # fewshot: the README's few-shot settings, results table and notes, per dataset; the docstring's mean and sd
    "fewshot": ("rows[].dataset", "rows[].setting", "rows[].accuracy", "rows[].accuracy_sd", "rows[].accuracies",
                "rows[].seconds",
                *(f"datasets.{name}.{key}" for name in ("rotten_tomatoes", "bbc_news") for key in (
                    "backbone", "label_words", "template", "majority_accuracy", "zero_shot_accuracy",
                    "labelled_per_site", "pool_labelled_per_site", "full_labelled_per_site", "max_length", "test_size",
                    "threshold", "per_class_cap", "pool_cap", "accuracy_per_round[].fewshot",
                    "accuracy_per_round[].fewshot_aug", "accuracy_per_round[].full",
                    "pseudo_label_rounds[][].pseudo_labels", "pseudo_label_rounds[][].pseudo_label_accuracy",
                    "pseudo_label_rounds[][].pseudo_label_seconds", "gap_closed", "gap_closed_per_seed",
                    "extra_compute.labelling_seconds_per_site_round", "extra_compute.labelling_seconds_total",
                    "extra_compute.wall_seconds_over_fewshot", "extra_compute.wall_ratio_over_fewshot")),
                "settings.sites", "settings.rounds", "settings.warmup_rounds", "settings.local_epochs",
                "settings.max_steps", "settings.batch_size", "settings.partition.shots",
                "settings.partition.quantity_alpha", "settings.partition.label_alpha", "settings.seeds"),
    # threshold: issue 30's Must show (rows, collusion, dropout, key substitution, round ratio, targets), README's
    # and docs/he.md's threshold tables
    "threshold": ("rows[].n", "rows[].t", "rows[].vector_size", "rows[].mode", "rows[].upload_bytes",
                  "rows[].download_bytes", "rows[].keygen_bytes_per_participant", "rows[].encrypt_s",
                  "rows[].aggregate_s", "rows[].partial_decrypt_s", "rows[].combine_s", "rows[].max_abs_error",
                  "rows[].round_s", "collusion.single_key", "collusion.threshold", "collusion.control_t_sites",
                  "collusion.aggregate_floor", "dropout.dropped", "dropout.completed", "key_substitution_refused",
                  "threshold_round_over_single_key_round", "round_ratio.median_round_s.threshold",
                  "round_ratio.median_round_s.single_key", "security_bits.single_key", "security_bits.threshold",
                  "he_params.threshold", "targets.threshold_round_over_single_key_round.met",
                  "targets.max_abs_error.met", "targets.upload_bytes.met", "targets.download_x_float32.met",
                  "targets.security_bits.met", "settings.members", "settings.vector_sizes"),
    # failover: issue 33's Must show and the README's "Scaling out" table
    "failover": ("trials", "takeover_s", "median_takeover_s", "round_resumed_s", "lost_versions",
                 "duplicate_aggregations", "completed_jobs", "per_trial[].attempts", "per_trial[].killed_after_versions",
                 "per_trial[].standby_took_lease", "settings.rounds", "settings.lease_ttl_s",
                 "settings.participant_processes", "settings.coordinator_processes", "settings.takeover"),
}

def stalls_figures(out: dict[str, Any]) -> None:
    """What ``bench stalls``' smoke figures say (6 stalled streams and 4 idle connections from 2 identities, a 2 s
    upload timeout, two waves): every stream cut off by the timeout in each wave, the honest round completed
    while they stalled, and the second wave, on a fresh round, finding every slot and connection freed."""
    assert (out["stalled_streams"], out["idle_connections"], out["identities"], out["waves"]) == (6, 4, 2, 2)
    assert out["errors"] == 0, out["settings"]["error_messages"]
    assert out["round_completed"] and out["round_completed_while_stalled"] and out["slots_freed"]
    assert (out["streams_closed_by_timeout"], out["streams_refused"], out["connections_after"]) == (12, 0, 0)
    assert out["close_after_s_min"] >= 2.0 and out["connections_peak"] >= 6 + 4
    assert 0 < out["rss_mb_before"] <= out["rss_mb_peak"] and out["status_calls"] > 0
    assert [w["streams_closed_by_timeout"] for w in out["per_wave"]] == [6, 6]
    assert out["settings"]["max_concurrent_uploads"] == 3 and out["settings"]["connection_idle_s"] == 4.0


#: What a bench's smoke figures must say, beyond its keys (for the benches whose smoke run is the one end-to-end
#: check of their behaviour).
FIGURES: dict[str, Callable[[dict[str, Any]], None]] = {"stalls": stalls_figures}

#: Benches that need a PostgreSQL server (started from Debian's package): skipped, with the reason, where none can be.
NEEDS_POSTGRES = frozenset({"failover"})


def lookup(report: Any, path: str) -> list[Any]:
    """The values at ``path`` (see the module docstring); raises ``KeyError`` naming the missing part."""
    values = [report]
    for part in path.split("."):
        key, depth = part, 0
        while key.endswith("[]"):
            key, depth = key[:-2], depth + 1
        found = []
        for value in values:
            if not isinstance(value, dict) or key not in value:
                raise KeyError(f"{path}: no {key!r}")
            found.append(value[key])
        for _ in range(depth):
            if not all(isinstance(v, list) and v for v in found):
                raise KeyError(f"{path}: {key!r} is not a non-empty list")
            found = [item for v in found for item in v]
        values = found
    return values


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_bench_smoke_writes_every_named_key(name: str, tmp_path: Path) -> None:
    if name in NEEDS_POSTGRES and (why := pgserver.unavailable()) is not None:
        pytest.skip(f"PostgreSQL: {why}")
    report = tmp_path / f"{name}.json"
    env = {**os.environ, "FEDPROMPT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "fedprompt", "bench", name, "--smoke", "--report", str(report)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    data = json.loads(report.read_text(encoding="utf-8"))
    missing = []
    for path in (*REPORT_KEYS[name], *PROVENANCE):
        try:
            lookup(data, path)
        except KeyError as exc:
            missing.append(str(exc))
    assert not missing, missing
    assert data["smoke"] is True
    if name in FIGURES:
        FIGURES[name](data)
    assert data["provenance"]["command"] == f"fedprompt bench {name} --smoke --report {report}"
