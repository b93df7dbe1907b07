"""Datasets, splits and partitioners: deterministic, complete, and as skewed as asked."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from fedprompt.data import partition
from fedprompt.data.datasets import DataFormat, load_builtin, load_file, majority_accuracy, train_test_split
from fedprompt.data.shards import DataPlan, PartitionSpec, load_site, prepare
from fedprompt.errors import ConfigError

LABELS = [i % 4 for i in range(400)]


def test_iid_covers_every_index_once_and_is_seeded() -> None:
    shards = partition.iid(LABELS, 5, seed=1)
    flat = sorted(i for s in shards for i in s.labelled)
    assert flat == list(range(400))
    assert shards == partition.iid(LABELS, 5, seed=1) and shards != partition.iid(LABELS, 5, seed=2)


def test_dirichlet_small_alpha_skews_labels_more() -> None:
    def skew(alpha: float) -> float:
        shards = partition.dirichlet(LABELS, 4, alpha, seed=0)
        fractions = [max(Counter(LABELS[i] for i in s.labelled).values()) / len(s.labelled) for s in shards]
        return float(np.mean(fractions))

    assert skew(0.1) > skew(100.0)
    assert sorted(i for s in partition.dirichlet(LABELS, 4, 0.5, 0) for i in s.labelled) == list(range(400))


def test_fewshot_respects_budget_and_leaves_an_unlabelled_pool() -> None:
    shards = partition.fewshot(LABELS, 4, shots_per_participant=8, quantity_alpha=0.5, label_alpha=0.5, seed=3)
    labelled = [i for s in shards for i in s.labelled]
    unlabelled = [i for s in shards for i in s.unlabelled]
    assert 4 <= len(labelled) <= 32 + 4 and all(len(s.labelled) >= 1 for s in shards)
    assert not set(labelled) & set(unlabelled) and len(labelled) + len(unlabelled) == 400


@pytest.mark.parametrize("call", [
    lambda: partition.iid([0, 1], 3, 0),
    lambda: partition.dirichlet(LABELS, 3, 0.0, 0),
    lambda: partition.fewshot(LABELS, 4, 0, 1.0, 1.0, 0),
])
def test_partitioners_refuse_impossible_requests(call) -> None:
    with pytest.raises(ConfigError):
        call()


def test_generic_loader_reads_csv_and_jsonl_with_configurable_columns(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("body,tag\nhello,a\nworld,b\n")
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x\u2028y", "tag": "a"}) + "\n")
    columns = DataFormat(text_column="body", label_column="tag")
    assert [e.label for e in load_file(tmp_path / "d.csv", columns).examples] == ["a", "b"]
    assert load_file(tmp_path / "d.jsonl", columns).examples[0].text == "x\u2028y"
    with pytest.raises(ConfigError, match=r"no column 'text' or 'label' in its header \('body', 'tag'\)"):
        load_file(tmp_path / "d.csv")


def test_a_site_directory_is_read_in_its_format_and_keeps_its_repeated_records(tmp_path: Path) -> None:
    rows = [{"body": "same", "tag": "a"}, {"body": "same", "tag": "a"}, {"body": " ", "tag": "b"}, {"body": "x", "tag": "b"}]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "unlabelled.jsonl").write_text('{"body": "pool", "tag": ""}\n{"body": ""}\n')
    site = load_site(tmp_path, DataFormat(text_column="body", label_column="tag"))
    assert [(e.text, e.label) for e in site.train] == [("same", "a"), ("same", "a"), ("x", "b")]
    assert site.test == [] and [(e.text, e.label) for e in site.unlabelled] == [("pool", "")]
    with pytest.raises(ConfigError, match=r"train\.jsonl: no record has a text in column 'text'"):
        load_site(tmp_path)


def test_builtin_datasets_are_real_and_split_deterministically() -> None:
    rt = load_builtin("rotten_tomatoes")
    assert len(rt) > 12000 and {e.label for e in rt} == {"fresh", "rotten"}
    bbc = load_builtin("bbc_news")
    assert {e.label for e in bbc} == {"business", "entertainment", "politics", "sport", "tech"}
    train, test = train_test_split(rt, 1000, seed=0)
    assert train_test_split(rt, 1000, seed=0) == (train, test)
    assert not {e.text for e in train} & {e.text for e in test}


def test_prepare_writes_one_directory_per_site(tmp_path: Path) -> None:
    dirs = prepare(DataPlan("rotten_tomatoes", participants=3, test_size=300,
                             partition=PartitionSpec("dirichlet", alpha=0.5)), tmp_path)
    sites = [load_site(d) for d in dirs]
    assert sum(len(s.test) for s in sites) == 300
    assert json.loads((tmp_path / "meta.json").read_text())["partition"]["scheme"] == "dirichlet"


def test_majority_accuracy() -> None:
    assert majority_accuracy([0, 1, 1, 1]) == 0.75


def test_data_plan_flags_and_the_simulation_table_build_the_same_plan(tmp_path: Path) -> None:
    from fedprompt.app.cli import build_parser, main
    from fedprompt.app.cli.common import plan_overrides
    from fedprompt.app.simulate import parse_simulation

    flags = ["--participants", "2", "--partition", "dirichlet", "--alpha", "0.3", "--test-size", "60", "--seed", "4"]
    expected = DataPlan(participants=2, test_size=60, seed=4, partition=PartitionSpec("dirichlet", alpha=0.3))
    from_flags = parse_simulation("", overrides=plan_overrides(build_parser().parse_args(["simulate", *flags]),
                                                               "simulation."))
    from_table = parse_simulation('[simulation]\nparticipants = 2\ntest_size = 60\nseed = 4\n'
                                  '[simulation.partition]\nscheme = "dirichlet"\nalpha = 0.3\n')
    assert from_flags.simulation == from_table.simulation == expected
    assert main(["data", "prepare", "--out", str(tmp_path), *flags]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["partition"] == {**PartitionSpec().__dict__, "scheme": "dirichlet", "alpha": 0.3}
    assert [s["test"] for s in meta["sites"]] == [len(s.test) for s in expected.deal()[0]]


@pytest.mark.parametrize("table, key", [
    ('[simulation.partition]\nscheme = "stratified"', "simulation.partition.scheme"),
    ("[simulation.partition]\nalpha = 0", "simulation.partition.alpha"),
    ("[simulation.partition]\nshots = 0", "simulation.partition.shots"),
    ("[simulation]\nparticipants = 0", "simulation.participants"),
    ('[simulation.format]\nencoding = "ebcdic-9"', "simulation.format.encoding"),
    ('[simulation.format]\ntext_column = ""', "simulation.format.text_column"),
    ('[simulation.format]\ntext_column = "tweet"', "simulation.format"),
    ('[simulation]\npartition = "iid"', "simulation.partition"),
])
def test_a_bad_data_plan_is_refused_naming_its_key(table: str, key: str) -> None:
    from fedprompt.app.simulate import parse_simulation

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_simulation(table)
