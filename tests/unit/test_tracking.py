"""``--track``: a simulation's parameters, per-round metrics, epsilon, report and plot read back from what MLflow
(a local file store) and TensorBoard (an event file) were sent; bad ``--track`` values refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support import refused_in_one_line, run_fedprompt, toy_job, without_packages


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory, tiny_encoder_dir: Path) -> tuple[Path, dict[str, object]]:
    """One 2-round simulation sent to both sinks: its directory and its report."""
    tmp = tmp_path_factory.mktemp("tracked")
    _, job, _ = toy_job(tmp, tiny_encoder_dir)
    result = run_fedprompt(["simulate", "--config", str(job), "--no-progress", "--set", "job.rounds=2",
                            "--report", str(tmp / "report.json"), "--plot", str(tmp / "plot.png"),
                            "--track", f"mlflow:{tmp / 'mlruns'}", "--track", f"tensorboard:{tmp / 'tb'}"], timeout=600)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return tmp, json.loads((tmp / "report.json").read_text())


def test_mlflow_holds_the_params_each_rounds_metrics_and_the_files(tracked: tuple[Path, dict[str, object]],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    tmp, report = tracked
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("fedprompt")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("simulate-")
    assert run.data.params["job.rounds"] == "2" and run.data.params["task.label_names"] == "['neg', 'pos']"
    rounds: list[dict[str, float]] = report["rounds"]  # type: ignore[assignment]
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(r["round"], pytest.approx(r["accuracy"])) for r in rounds]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "aggregated")] == [2.0, 2.0]
    assert run.data.metrics["final/final_accuracy"] == pytest.approx(report["final_accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"report.json", "plot.png"}


def test_tensorboard_holds_each_rounds_scalars_the_params_the_report_and_the_plot(
        tracked: tuple[Path, dict[str, object]]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, report = tracked
    [run] = list((tmp / "tb").iterdir())
    events = EventAccumulator(str(run), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    rounds: list[dict[str, float]] = report["rounds"]  # type: ignore[assignment]
    assert [(e.step, e.value) for e in events.Scalars("accuracy")] == [
        (r["round"], pytest.approx(r["accuracy"], abs=1e-6)) for r in rounds]
    assert events.Scalars("final/final_accuracy")[0].value == pytest.approx(report["final_accuracy"], abs=1e-6)
    texts = {tag: events.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in events.Tags()["tensors"]}
    assert "job.rounds = 2" in texts["params/text_summary"]
    assert '"final_accuracy"' in texts["report.json/text_summary"]
    assert events.Tags()["images"] == ["plot"]


@pytest.mark.parametrize(("spec", "named"), [("wandb:runs", "--track 'wandb:runs'"), ("mlflow", "--track 'mlflow'"),
                                             ("tensorboard:", "--track 'tensorboard:'")])
def test_a_bad_track_is_refused_in_one_line(spec: str, named: str) -> None:
    result = run_fedprompt(["simulate", "--track", spec])
    assert "expected mlflow:DIR" in refused_in_one_line(result, named)


def test_a_file_where_the_tracking_directory_goes_is_refused_before_the_run(tmp_path: Path) -> None:
    (tmp_path / "taken").write_bytes(b"\x00\xff binary")
    result = run_fedprompt(["simulate", "--track", f"tensorboard:{tmp_path / 'taken'}"])
    assert "cannot use directory" in refused_in_one_line(result, "--track")
    assert os.listdir(tmp_path) == ["taken"]


@pytest.mark.parametrize(("spec", "package"), [("mlflow:runs", "mlflow"), ("tensorboard:runs", "tensorboard")])
def test_a_sink_whose_package_is_missing_is_refused_naming_the_extra(tmp_path: Path, spec: str, package: str) -> None:
    result = run_fedprompt(["simulate", "--track", spec], env=without_packages(tmp_path / "site", package))
    line = refused_in_one_line(result, f"the {package} package is not installed")
    assert line.endswith("install the tracking extra: pip install 'fedprompt[tracking]'")


def test_a_bench_sends_its_options_its_reports_scalars_and_the_report(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    report = tmp_path / "bench.json"
    result = run_fedprompt(["bench", "threshold", "--smoke", "--report", str(report), "--track",
                            f"mlflow:{tmp_path / 'mlruns'}"], timeout=600)  # the quickest bench: crypto only
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    written = json.loads(report.read_text())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    [run] = client.search_runs([client.get_experiment_by_name("fedprompt").experiment_id])  # type: ignore[union-attr]
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("bench-threshold-")
    assert run.data.params["name"] == "threshold" and run.data.params["smoke"] == "True"
    assert "log_level" not in run.data.params
    assert run.data.metrics["final/threshold_round_over_single_key_round"] == pytest.approx(
        written["threshold_round_over_single_key_round"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["bench.json"]


def test_a_tracking_uri_mlflow_cannot_use_is_refused_in_one_line() -> None:
    result = run_fedprompt(["simulate", "--track", "mlflow:nosuch://tracker", "--set", "job.rounds=1"], timeout=300)
    assert "--track 'mlflow:nosuch://tracker': " in refused_in_one_line(result, "nosuch://tracker")
