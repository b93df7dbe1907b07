"""``[he] mode`` and ``threshold``: validated at load with the bad key named, a majority by default, and the
job kinds threshold keys cannot serve yet refused by name."""

from __future__ import annotations

import re

import pytest

from fedprompt.config import JobConfig
from fedprompt.config.codec import parse_toml
from fedprompt.coordinator.aggregation import Aggregator, job_aggregator
from fedprompt.errors import ConfigError

THREE = "allowed_participants = ['participant:a', 'participant:b', 'participant:c']"


def _load(job: str = THREE, he: str = "") -> JobConfig:
    return parse_toml(f"[job]\n{job}\n[he]\nenabled = true\nmode = 'threshold'\n{he}", JobConfig)


def test_threshold_defaults_to_a_majority_of_the_enrolled_members() -> None:
    config = _load()
    assert config.he.threshold_mode
    assert config.he.threshold_params(3).t == 2
    five = _load("allowed_participants = ['participant:a', 'participant:b', 'participant:c', 'participant:d', "
                 "'participant:e']", "threshold = 5")
    assert five.he.threshold_params(5).t == 5


@pytest.mark.parametrize(("job", "he", "key"), [
    (THREE, "mode = 'both'", "he.mode"),
    (THREE, "threshold = 1", "he.threshold"),
    (THREE, "threshold = 4", "he.threshold"),
    ("allowed_participants = ['*']", "", "job.allowed_participants"),
    ("", "", "job.allowed_participants"),
    (f"{THREE}\nmin_participants = 1", "", "job.min_participants"),
    (THREE, "gram_norm_bound = 0", "he.gram_norm_bound"),
    (THREE, "gram_norm_bound = 1e9", "he.gram_norm_bound"),
    (THREE, "gram_norm_bound = inf", "he.gram_norm_bound"),
])
def test_bad_threshold_settings_name_their_key(job: str, he: str, key: str) -> None:
    text = f"[job]\n{job}\n[he]\nenabled = true\nmode = 'threshold'\n{he}".replace("mode = 'threshold'\nmode",
                                                                                    "mode")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_toml(text, JobConfig)


def test_a_gram_job_takes_the_gram_chain_and_its_norm_bound() -> None:
    """A threshold job whose coordinator computes a Gram matrix takes ``gram_threshold_params`` (N = 8192,
    public-key uploads) with the same t; the norm bound R is read as given."""
    config = _load(he="threshold = 3\ngram_norm_bound = 250.5")
    plain, gram = config.he.threshold_params(3), config.he.threshold_params(3, gram=True)
    assert config.he.gram_norm_bound == 250.5
    assert plain.seeded_uploads and plain.poly_modulus_degree < gram.poly_modulus_degree
    assert (gram.poly_modulus_degree, gram.seeded_uploads, gram.t) == (8192, False, 3)


def test_single_key_mode_keeps_jobs_open_to_any_participant() -> None:
    config = parse_toml("[job]\nallowed_participants = ['*']\n[he]\nenabled = true\nmode = 'single_key'", JobConfig)
    assert config.he.enabled and not config.he.threshold_mode


def test_levels_are_refused_with_threshold_keys_by_name_and_gram_defences_load() -> None:
    with pytest.raises(ConfigError, match=r"levels\.enabled.*not wired"):
        parse_toml(f"[job]\n{THREE}\n[he]\nenabled = true\nmode = 'threshold'\n[levels]\nenabled = true\n"
                   "global_tokens = 4\nexpert_tokens = 0\npersonal_tokens = 4\n[model]\nprompt_length = 8",
                   JobConfig)
    gram = _load(THREE + "\naggregator = 'norm_bound'\nmin_participants = 3\nparticipants_per_round = 3")
    assert job_aggregator(gram).gram  # a Gram defence under threshold keys (coordinator.threshold_gramjob)


def test_a_gram_defence_loads_under_the_default_mode_and_levels_are_refused_naming_single_key() -> None:
    """Threshold keys are the default: a Gram defence loads under them (its norm bound checked against the Gram
    chain) as under a single key; levels, which they cannot serve yet, are refused with the key to set."""
    gram = (f"[job]\n{THREE}\naggregator = 'norm_bound'\nmin_participants = 3\nparticipants_per_round = 3\n"
            "[robust]\nmax_malicious = 1\n[he]\nenabled = true\n")
    assert parse_toml(gram, JobConfig).he.threshold_mode and job_aggregator(parse_toml(gram, JobConfig)).gram
    assert job_aggregator(parse_toml(gram + "mode = 'single_key'\n", JobConfig)).gram
    levels = (f"[job]\n{THREE}\n[levels]\nenabled = true\nglobal_tokens = 4\nexpert_tokens = 0\n"
              "personal_tokens = 4\n[model]\nprompt_length = 8\n[he]\nenabled = true\n")
    with pytest.raises(ConfigError, match=r'levels\.enabled: .*\(the default\).*set he\.mode = "single_key"'):
        parse_toml(levels, JobConfig)
    assert parse_toml(levels + "mode = 'single_key'\n", JobConfig).levels.enabled



def _members(n: int) -> str:
    return "allowed_participants = [" + ", ".join(f"'participant:{k}'" for k in range(n)) + "]"


def test_a_gram_defence_that_always_keeps_fewer_than_min_participants_is_refused_under_threshold_keys() -> None:
    """Members decrypt no accepted sum of fewer than ``job.min_participants`` updates (``docs/he.md``, "The
    uploader floor"), so a Gram defence that always keeps fewer could never aggregate under threshold keys: it is
    refused at load naming the setting that caps it (Krum keeps one; Multi-Krum ``multi_krum_keep`` or n - f of
    at most ``participants_per_round``).  Krum loads under a single key, Multi-Krum where it can keep enough."""
    def load(job: str, robust: str = "", he: str = "") -> Aggregator:
        return job_aggregator(parse_toml(f"[job]\n{job}\n[robust]\n{robust}\n[he]\nenabled = true\n{he}", JobConfig))

    krum = f"{THREE}\nmin_participants = 3\naggregator = 'krum'"
    multi = f"{THREE}\nmin_participants = 3\naggregator = 'multi_krum'"
    five, six = (f"{_members(n)}\nparticipants_per_round = {n}\nmin_participants = 5\naggregator = 'multi_krum'"
                 for n in (5, 6))
    for job, robust, key in [(krum, "max_malicious = 0", "job.aggregator"),
                             (multi, "max_malicious = 0\nmulti_krum_keep = 2", "robust.multi_krum_keep"),
                             (five, "max_malicious = 1", "job.min_participants")]:
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}: .*no round could aggregate"):
            load(job, robust)
    assert load(krum, "max_malicious = 0", "mode = 'single_key'").gram and load(multi, "max_malicious = 0").gram
    assert load(six, "max_malicious = 1").gram
