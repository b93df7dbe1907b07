"""Experiment tracking for ``simulate``, ``demo`` and ``bench`` runs: ``--track mlflow:DIR|URI`` and
``--track tensorboard:DIR`` (repeatable; off by default), named after Hugging Face's ``report_to``.

A run sends its parameters (the job's configuration, flattened to dotted keys, or a bench's options), each
round's metrics as that round finishes (``progress.RoundFeed``: accuracy, loss, updates aggregated, bytes,
seconds, epsilon), the report's scalars at the end, and its files (the JSON report, the plot) as artefacts.
Both sinks are in the optional ``[tracking]`` extra (``mlflow-skinny``, ``tensorboard``); a ``--track`` whose
package is missing is refused before the run, naming the extra.

MLflow: a directory is MLflow's file store (MLflow 3 keeps that store in maintenance mode and asks for an
opt-in, which naming a directory here gives); a URI (``http://host:5000``, ``sqlite:///mlflow.db`` with the
full ``mlflow`` package) is passed on as it is.  Runs go to the experiment ``fedprompt``.  TensorBoard: one
event file per run under ``DIR/RUN_NAME``, scalars by round, the parameters and the report as text, the plot
as an image.
"""

from __future__ import annotations

import abc
import datetime
import json
import math
import os
import tomllib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

from fedprompt.errors import ConfigError, FedPromptError, FileError, clip, quoted

log = structlog.get_logger("tracking")

#: The sinks ``--track`` may name, and the package each one needs.
SINKS = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
#: The experiment MLflow runs go to.
EXPERIMENT = "fedprompt"
#: Characters kept of a parameter's value (MLflow refuses values over 6,000).
MAX_PARAM = 500
#: MLflow's limit on metrics or parameters in one ``log_batch`` call.
BATCH = 100


def scalars(data: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers in ``data`` (nested mappings flattened with ``/``; booleans, lists, text skipped): what
    a report or a round row has to chart."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(scalars(value, f"{name}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``data`` (e.g. a job's TOML tables) as dotted keys and text values, each cut to ``MAX_PARAM``."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:MAX_PARAM]
    return out


def job_params(config_toml: str) -> dict[str, str]:
    """A job's configuration (its TOML) as tracking parameters."""
    return flat_params(tomllib.loads(config_toml))


class Sink(abc.ABC):
    """One tracking backend's run."""

    @abc.abstractmethod
    def round(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics of round ``step``."""

    @abc.abstractmethod
    def finish(self, report: Mapping[str, Any], files: list[Path], failed: bool) -> None:
        """The report's scalars and the run's files; ``failed``: the run ended by an error."""


class MlflowSink(Sink):
    """A run in MLflow's experiment ``fedprompt`` (through ``MlflowClient``, no global MLflow state)."""

    def __init__(self, target: str, run_name: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param, RunStatus
        from mlflow.tracking import MlflowClient

        self._status = RunStatus
        uri = target if "://" in target or target.startswith("sqlite:") else _directory(target).as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # naming a directory is the opt-in
        self.client = MlflowClient(tracking_uri=uri)
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(EXPERIMENT)
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        items = [Param(k, v) for k, v in params.items()]
        for at in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[at:at + BATCH])

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(datetime.datetime.now(datetime.UTC).timestamp() * 1000)
        items = [Metric(k, v, now, step) for k, v in metrics.items()]
        for at in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, metrics=items[at:at + BATCH])

    def round(self, step: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, step)

    def finish(self, report: Mapping[str, Any], files: list[Path], failed: bool) -> None:
        self._metrics({f"final/{k}": v for k, v in scalars(report).items()}, 0)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, self._status.to_string(
            self._status.FAILED if failed else self._status.FINISHED))


class TensorBoardSink(Sink):
    """One TensorBoard event file under ``DIR/RUN_NAME``."""

    def __init__(self, target: str, run_name: str, params: dict[str, str]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(_directory(target) / run_name))
        self.writer.add_text("params", "\n".join(f"    {k} = {v}" for k, v in params.items()))
        self.last = 0

    def round(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.last = step

    def finish(self, report: Mapping[str, Any], files: list[Path], failed: bool) -> None:
        import matplotlib.image

        for key, value in scalars(report).items():
            self.writer.add_scalar(f"final/{key}", value, self.last)
        for path in files:
            if path.suffix == ".png":
                self.writer.add_image(path.stem, matplotlib.image.imread(path)[..., :3], self.last, dataformats="HWC")
            else:
                text = path.read_text(encoding="utf-8", errors="replace")
                self.writer.add_text(path.name, "\n".join("    " + line for line in text.splitlines()), self.last)
        if failed:
            self.writer.add_text("outcome", "failed", self.last)
        self.writer.close()


class Tracking:
    """The run's sinks (none: tracking off), each sent the same rows.  A sink that fails during the run (a
    tracking server gone, a full disk) is dropped with one warning: the run and its report go on."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    def round(self, row: Mapping[str, Any]) -> None:
        """A round's row (``report.round_rows``), its round number as the step."""
        metrics = scalars({k: v for k, v in row.items() if k != "round"})
        self._each(lambda sink: sink.round(int(row["round"]), metrics))

    def finish(self, report: Mapping[str, Any], files: list[str | Path | None], failed: bool = False) -> None:
        """The report (its per-round list left out: the rounds were sent as they finished) and the files that
        exist among ``files``."""
        summary = {k: v for k, v in report.items() if k != "rounds"}
        present = [Path(f) for f in files if f is not None and Path(f).is_file()]
        self._each(lambda sink: sink.finish(summary, present, failed))

    def _each(self, send: Callable[[Sink], None]) -> None:
        for sink in list(self.sinks):
            try:
                send(sink)
            except Exception as exc:  # any: a tracker library's failure must not end the run it tracks
                log.warning("experiment tracking failed; the run goes on without it", sink=type(sink).__name__,
                            reason=clip(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 300))
                self.sinks.remove(sink)


def check_track(specs: list[str]) -> list[tuple[str, str]]:
    """``--track`` values as (sink, target), refused before a run when a sink is unknown, has no target, or its
    package is not installed."""
    import importlib

    parsed = []
    for spec in specs:
        name, sep, target = spec.partition(":")
        if name not in SINKS or not sep or not target:
            raise ConfigError(f"--track {quoted(spec)}: expected mlflow:DIR (or mlflow:URI) or tensorboard:DIR")
        try:
            importlib.import_module(SINKS[name])
        except ImportError:
            raise ConfigError(f"--track {name}: the {SINKS[name]} package is not installed; install the tracking "
                              "extra: pip install 'fedprompt[tracking]'") from None
        if name == "tensorboard" or not ("://" in target or target.startswith("sqlite:")):
            _directory(target)
        parsed.append((name, target))
    return parsed


@contextmanager
def tracking(specs: list[str], command: str, params: dict[str, str]) -> Iterator[Tracking]:
    """The sinks ``specs`` name, opened for one run of ``command`` (the run's name: the command and the UTC
    time); a run that raises is finished as failed with what it had sent."""
    run_name = f"{command}-{datetime.datetime.now(datetime.UTC):%Y%m%dT%H%M%SZ}"
    sinks: list[Sink] = []
    for name, target in check_track(specs):
        try:
            sinks.append((MlflowSink if name == "mlflow" else TensorBoardSink)(target, run_name, params))
        except FedPromptError:
            raise
        except Exception as exc:  # any: the library's own (an unsupported URI, a server that does not answer)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--track {quoted(f'{name}:{target}')}: {clip(first, 300)}") from exc
    opened = Tracking(sinks)
    try:
        yield opened
    except BaseException:
        opened.finish({}, [], failed=True)
        raise


def _directory(target: str) -> Path:
    """A tracking directory, made if missing; one that cannot be is a ``FileError`` naming it."""
    path = Path(target).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FileError(f"--track: cannot use directory {quoted(target)}: {exc.strerror or exc}") from exc
    return path


def load_report(path: str | Path) -> dict[str, Any]:
    """A report JSON a bench wrote, for its scalars; unreadable is a ``FileError``."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FileError(f"--track: cannot read the report {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}
