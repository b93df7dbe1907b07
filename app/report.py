"""Run reports shared by ``demo``, ``simulate`` and benchmarks: JSON dict, console table, PNG plot."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime
import enum
import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from fedprompt.config import JobConfig, parse_toml
from fedprompt.errors import FileError
from fedprompt.files import writable
from fedprompt.protocol import JobView

PRIVACY_KEYS = ("record_epsilon_max", "record_epsilon_median", "participant_epsilon")
PRIVACY_HEADERS = ("eps_rec_max", "eps_rec_median", "eps_participant")


#: What a generation job reports in place of accuracy (``fedprompt.models.generator.text_metrics``).
TEXT_METRICS = ("exact_match", "rouge_l")


def round_rows(view: JobView) -> list[dict[str, Any]]:
    """One dict per completed round: accuracy/loss of its global version, bytes, seconds, how many updates it
    received (``updates``) and folded in (``aggregated``: received less those a defence rejected) of the
    ``selected`` members, so a round that went on without a member says so, the round's
    pseudo-labelling metrics (``pseudo_label*``) when ``[augment]`` is on, the prompt levels' cohort counts
    (``expert_cohorts_*``, ``cohorts_discovered``) when ``[levels]`` is on, and (with DP) the record-level
    epsilon of its contributors (max, median) and the participant-level epsilon so far."""
    rows = []
    for r in view.rounds:
        if r.state != "done":
            continue
        rows.append({
            "round": r.round, "accuracy": r.metrics.get("accuracy"), "loss": r.metrics.get("loss"),
            "bytes_up": r.bytes_up, "bytes_down": r.bytes_down, "seconds": round(r.closed_at - r.opened_at, 3),
            "updates": int(r.metrics.get("updates", 0)),
            "aggregated": int(r.metrics.get("updates", 0)) - len(r.rejected), "selected": len(r.selected),
            "metric_reports": r.metric_reports,
            **{k: v for k, v in r.metrics.items()
               if k.startswith(("pseudo_label", "expert_cohorts", "cohorts_")) or k in ("gram_seconds", *TEXT_METRICS)},
            **{k: r.metrics.get(k) for k in PRIVACY_KEYS},
            "model_queries": r.metrics.get("model_queries"), "peak_rss_mb": r.metrics.get("peak_rss_mb"),
        })
    return rows


def privacy_spent(view: JobView) -> dict[str, Any]:
    """The job's privacy guarantee after its last completed round: the largest record-level epsilon any
    contributor reported (at the largest delta), and the participant-level epsilon (None where not used)."""
    done = [r for r in view.rounds if r.state == "done"]
    last = done[-1].metrics if done else {}
    return {"epsilon": last.get("record_epsilon_max"), "delta": last.get("record_delta_max"),
            "participant_epsilon": last.get("participant_epsilon"), "participant_delta": last.get("participant_delta")}


def above_majority(accuracy: float | None, majority: float) -> bool | None:
    """Whether ``accuracy`` beats always answering the majority class (None without an accuracy): a prompt
    that does not has learnt nothing a constant answer would not give, whatever the curve looks like."""
    return None if accuracy is None else accuracy > majority


def build_report(view: JobView, majority: float, exchanged: int, plm: int, *, test_examples: int | None = None,
                 **extra: Any) -> dict[str, Any]:
    """The run's report.  ``model_queries`` (black-box: texts scored by the model service) and
    ``participant_peak_rss_mb`` are per-participant means of what members reported on the last version;
    ``test_examples`` (the test split's size) tells a reader how far apart two accuracies must be to differ, and
    ``above_majority`` flags a final accuracy no better than the majority class."""
    rows = round_rows(view)
    final = rows[-1] if rows else {}
    task = parse_toml(view.config_toml, JobConfig).task.kind
    text = {f"{when}_{k}": m.get(k) for k in TEXT_METRICS for when, m in (("zero_shot", view.initial_metrics),
                                                                            ("final", final))}
    return {
        "task": task, **(text if task == "generation" else {}),
        "job_id": view.job_id, "state": view.state, "mode": parse_toml(view.config_toml, JobConfig).mode,
        "majority_accuracy": majority, "zero_shot_accuracy": view.initial_metrics.get("accuracy"),
        "zero_shot_loss": view.initial_metrics.get("loss"), "final_accuracy": final.get("accuracy"),
        "above_majority": above_majority(final.get("accuracy"), majority), "test_examples": test_examples,
        "rounds": rows,
        "exchanged_params": exchanged, "exchanged_floats": exchanged, "plm_params": plm,
        "exchanged_over_plm": exchanged / plm if plm else None,
        "model_queries": final.get("model_queries"), "participant_peak_rss_mb": final.get("peak_rss_mb"), **extra,
    }


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)


#: Marks, in the round table and the summary, an accuracy that is not above the majority class.
BELOW_MAJORITY_MARK = "!"


def _accuracy_cell(accuracy: float | None, majority: float) -> str:
    return fmt(accuracy) + (f" {BELOW_MAJORITY_MARK}" if above_majority(accuracy, majority) is False else "")


def round_table(report: dict[str, Any]) -> str:
    """One line a round; ``aggregated`` reads "updates folded in / members selected", and an accuracy that is not
    above the majority class carries :data:`BELOW_MAJORITY_MARK`, explained under the table."""
    if report.get("task") == "generation":
        return table(["round", *TEXT_METRICS, "loss", "aggregated", "bytes_up", "bytes_down", "seconds",
                      *PRIVACY_HEADERS],
                     [[r["round"], *(r.get(k) for k in TEXT_METRICS), r["loss"], f"{r['aggregated']}/{r['selected']}",
                       r["bytes_up"], r["bytes_down"], r["seconds"], *(r.get(k) for k in PRIVACY_KEYS)]
                      for r in report["rounds"]])
    majority = report["majority_accuracy"]
    rows = [[r["round"], _accuracy_cell(r["accuracy"], majority), r["loss"],
             f"{r['aggregated']}/{r['selected']}", r["bytes_up"], r["bytes_down"],
             r["seconds"], *(r.get(k) for k in PRIVACY_KEYS)] for r in report["rounds"]]
    text = table(["round", "accuracy", "loss", "aggregated", "bytes_up", "bytes_down", "seconds", *PRIVACY_HEADERS],
                 rows)
    if any(above_majority(r["accuracy"], majority) is False for r in report["rounds"]):
        text += f"\n{BELOW_MAJORITY_MARK} accuracy not above the majority class ({fmt(majority)})"
    return text


def summary(report: dict[str, Any]) -> str:
    test = f" on {report['test_examples']:,} test examples" if report.get("test_examples") else ""
    method = f", {report['peft_method']}" if report.get("peft_method") else ""
    exchanged = (f"exchanged {report['exchanged_params']:,} of {report['plm_params']:,} PLM parameters "
                 f"({100 * (report['exchanged_over_plm'] or 0):.4f}%{method})")
    if report.get("task") == "generation":
        return " | ".join([*(f"{k} {fmt(report[f'zero_shot_{k}'])} -> {fmt(report[f'final_{k}'])}"
                             for k in TEXT_METRICS), f"loss {fmt(report['zero_shot_loss'])} -> "
                           f"{fmt(report['rounds'][-1]['loss'] if report['rounds'] else None)}{test}", exchanged])
    return (f"majority {fmt(report['majority_accuracy'])} | zero-shot {fmt(report['zero_shot_accuracy'])} | "
            f"final {_accuracy_cell(report['final_accuracy'], report['majority_accuracy'])}{test} | {exchanged}")


def majority_warning(report: dict[str, Any]) -> str | None:
    """The one warning line ``demo`` and ``simulate`` print when the final accuracy is not above the majority
    class (None otherwise), with where to look: such a run is usually a task/model mismatch, not bad luck."""
    if above_majority(report["final_accuracy"], report["majority_accuracy"]) is not False:
        return None
    return (f"warning: final accuracy {fmt(report['final_accuracy'], 2)} is not above the majority class "
            f"{fmt(report['majority_accuracy'], 2)}: check task.label_words and task.template against the "
            f"backbone, or raise train.lr, train.local_epochs or train.max_steps (see the README's models section)")


def attack_summary(report: dict[str, Any]) -> str:
    """One line on an attacked simulation: who attacked, attack success rate, detection precision/recall."""
    detection = report.get("detection") or {}
    return (f"attack {report['attack']['kind']} by {', '.join(report['malicious']) or 'nobody'} | "
            f"ASR {fmt(report.get('asr'))} | detection precision {fmt(detection.get('precision'))} "
            f"recall {fmt(detection.get('recall'))}")


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: the one conversion every report writer uses for the settings it was given
    (config dataclasses such as ``PartitionSpec``, enums, paths, NumPy scalars and arrays, tuples and sets), so
    no report dies at its last step on an object ``json`` does not know."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(jsonable(v) for v in value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy scalars and arrays, torch tensors
        return jsonable(value.tolist())
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"a report cannot hold a {type(value).__name__}")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


#: The ``fedprompt`` command line being run, set by the CLI's ``main`` for the command's length: a command run
#: in-process (tests, a notebook) records its own arguments, not the host process's ``sys.argv``.
COMMAND: contextvars.ContextVar[str | None] = contextvars.ContextVar("fedprompt_command", default=None)


def provenance() -> dict[str, Any]:
    """Where a report's figures come from: the ``fedprompt`` command being run (``COMMAND``; outside the CLI, this
    process's arguments), the commit of the source tree it ran from (``null`` outside a git checkout; ``dirty``
    when the tree had uncommitted changes), the UTC date and the machine, so a README table can name all three."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "command": COMMAND.get() or shlex.join(["fedprompt", *sys.argv[1:]]),
        "commit": _git("rev-parse", "--short=7", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }


def write_report_text(text: str, path: str | Path) -> None:
    """Write one report file (its folder made as needed); a path that cannot be written is a ``FileError``
    naming it, so a run ends with one line rather than a traceback."""
    try:
        writable(path, "report").parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise FileError(f"cannot write report {path}: {exc.strerror or exc}") from exc


def write_json(report: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """Write a run report through :func:`jsonable`, with its :func:`provenance` under ``provenance`` (unless the
    report brings its own), and return what was written (for a Markdown twin made from the same data)."""
    data = jsonable({**report, "provenance": report.get("provenance") or provenance()})
    write_report_text(json.dumps(data, indent=2), path)
    return data


@contextlib.contextmanager
def saved_figure(path: str | Path, ncols: int = 1,
                 figsize: tuple[float, float] = (7, 4)) -> Iterator[tuple[Any, list[Any]]]:
    """A headless (Agg) figure with ``ncols`` axes side by side, written to ``path`` as a PNG when the block
    ends: one place for the backend, layout, resolution and clean-up that every report plot shares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize, squeeze=False)
    try:
        yield fig, list(axes[0])
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def accuracy_limits(report: dict[str, Any], margin: float = 0.02) -> tuple[float, float]:
    """The accuracy axis' range: from at or below the majority line (so a curve under it is seen to be under
    it, not cropped into looking like progress) to just above the best accuracy, within [0, 1]."""
    values = [v for v in (report["majority_accuracy"], report.get("zero_shot_accuracy"),
                          *(r["accuracy"] for r in report["rounds"])) if v is not None]
    return max(0.0, min(values) - margin), min(1.0, max(values) + margin)


def plot_rounds(report: dict[str, Any], path: str | Path, title: str = "fedprompt") -> tuple[float, float]:
    """Accuracy and loss per round, with the majority and zero-shot baselines drawn as lines under the markers;
    the accuracy axis starts at or below the majority line and names the test-set size, so a reader can judge
    both the gain and its noise.  With DP, a third panel shows the privacy spent after each round (record
    level per site, and participant level), so the price of every point of accuracy is in the same picture.
    Returns the accuracy axis' limits as drawn."""
    from matplotlib.ticker import MaxNLocator

    rounds = [0] + [r["round"] for r in report["rounds"]]
    acc = [report["zero_shot_accuracy"]] + [r["accuracy"] for r in report["rounds"]]
    loss = [report.get("zero_shot_loss")] + [r["loss"] for r in report["rounds"]]
    privacy = {label: [0.0] + [r.get(key) for r in report["rounds"]]
               for key, label in (("record_epsilon_max", "record level (max over sites)"),
                                  ("participant_epsilon", "participant level"))
               if any(r.get(key) is not None for r in report["rounds"])}
    test = report.get("test_examples")
    with saved_figure(path, 3 if privacy else 2, (15 if privacy else 10, 4)) as (fig, axes):
        ax1, ax2 = axes[0], axes[1]
        ax1.plot(rounds, acc, marker="o", label="global prompt", zorder=3)
        ax1.axhline(report["majority_accuracy"], color="grey", linestyle="--", label="majority class", zorder=1)
        if report["zero_shot_accuracy"] is not None:
            ax1.axhline(report["zero_shot_accuracy"], color="orange", linestyle=":", label="zero-shot", zorder=1)
        ax1.set_ylim(*accuracy_limits(report))
        ax1.set_xlabel("round")
        ax1.set_ylabel(f"test accuracy (n = {test:,})" if test else "test accuracy")
        ax1.legend()
        ax1.grid(alpha=0.3)
        ax2.plot(rounds, loss, marker="o", color="tab:red")
        ax2.set_xlabel("round")
        ax2.set_ylabel("test loss")
        ax2.grid(alpha=0.3)
        for label, spent in privacy.items():
            axes[2].plot(rounds, spent, marker="o", label=label)
        if privacy:
            axes[2].set_xlabel("round")
            axes[2].set_ylabel("epsilon spent")
            axes[2].legend()
            axes[2].grid(alpha=0.3)
        for ax in axes:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.suptitle(title)
        low, high = ax1.get_ylim()
    return float(low), float(high)
