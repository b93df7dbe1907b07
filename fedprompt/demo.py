"""``fedprompt demo``: a real coordinator process and N participant processes on loopback gRPC, one job end
to end on Rotten Tomatoes, with a progress bar, a per-round table, a JSON report and a PNG plot."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from fedprompt.admin_client import AdminClient
from fedprompt.config import JobConfig, JobSection, ModelSection, TaskSection, TrainSection, dump_toml
from fedprompt.data.datasets import BUILTIN, label_indices, majority_accuracy, read_jsonl
from fedprompt.data.shards import PartitionSpec, prepare
from fedprompt.errors import FedPromptError
from fedprompt.report import build_report, plot_rounds, round_table, summary, write_json

DATASET = "rotten_tomatoes"


@dataclass(frozen=True)
class DemoOptions:
    participants: int = 3
    rounds: int = 5
    backbone: str = "encoder"
    report: str = "reports/demo.json"
    plot: str = "reports/demo.png"
    workdir: str | None = None
    steps: int = 30
    test_size: int = 1000
    seed: int = 0


def demo_job(options: DemoOptions) -> JobConfig:
    """The demo's job: MiniLM (or SmolLM2) with a 16-token prompt, every site in every round."""
    spec = BUILTIN[DATASET]
    causal = options.backbone == "causal"
    return JobConfig(
        job=JobSection(name="demo", rounds=options.rounds, participants_per_round=options.participants,
                       min_participants=max(1, options.participants - 1), round_deadline_s=900.0, seed=options.seed),
        model=ModelSection(path="builtin:smollm2" if causal else "builtin:minilm", prompt_length=16 if not causal else 8,
                           max_length=64),
        task=TaskSection(label_names=spec.label_names,
                         label_words=("negative", "positive") if causal else spec.label_words,
                         template="Review: {text}\nSentiment:" if causal else "{text}"),
        train=TrainSection(local_epochs=1, max_steps=options.steps, batch_size=16 if not causal else 8,
                           lr=0.01 if not causal else 0.003),
    )


def spawn(args: list[str], log_path: Path, stack: ExitStack) -> subprocess.Popen[bytes]:
    """Start ``python -m fedprompt ARGS`` (one torch thread), stopped when ``stack`` closes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log_file = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen([sys.executable, "-m", "fedprompt", *args], stdout=log_file, stderr=subprocess.STDOUT,
                            env=env)
    stack.callback(stop, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_for_port(port_file: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0,
                  what: str = "coordinator") -> int:
    """The port a spawned server wrote to ``port_file`` once listening."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_file.exists() and port_file.read_text().strip():
            return int(port_file.read_text())
        if proc.poll() is not None:
            raise FedPromptError(f"{what} exited during start-up; see its log")
        time.sleep(0.1)
    raise FedPromptError(f"{what} did not start listening within {timeout:.0f} s")


def run_demo(options: DemoOptions) -> int:
    started = time.perf_counter()
    with ExitStack() as stack:
        work = Path(options.workdir) if options.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        print(f"[demo] preparing {DATASET} for {options.participants} sites in {work}")
        sites = prepare(DATASET, work / "data", options.participants, PartitionSpec("iid"), options.test_size,
                        options.seed)
        config = demo_job(options)
        test_labels = label_indices(read_jsonl(work / "data" / "test.jsonl"), config.task.label_names)

        port_file = work / "coordinator.port"
        port_file.unlink(missing_ok=True)
        coordinator = spawn(["coordinator", "serve", "--insecure", "--listen", "127.0.0.1:0", "--state-dir",
                              str(work / "coordinator"), "--port-file", str(port_file)], work / "coordinator.log", stack)
        target = f"127.0.0.1:{wait_for_port(port_file, coordinator)}"
        print(f"[demo] coordinator on {target} (pid {coordinator.pid})")
        admin = AdminClient(target)
        stack.callback(admin.close)
        job_id = admin.create_job(dump_toml(config))
        procs = [
            spawn(["participant", "run", "--coordinator", target, "--job", job_id, "--name", f"site-{k}",
                    "--data-dir", str(site), "--state-dir", str(work / "state" / f"site-{k}"), "--threads", "1",
                    "--no-progress"], work / f"site-{k}.log", stack)
            for k, site in enumerate(sites)
        ]
        print(f"[demo] {len(procs)} participant processes started; job {job_id}")
        admin.start(job_id)
        view = follow(admin, job_id, options.rounds, options.participants, procs)
        plm_params, vector_size = _model_sizes(config)
        report = build_report(view, majority_accuracy(test_labels), vector_size, plm_params,
                              seconds=round(time.perf_counter() - started, 1), participants=options.participants,
                              backbone=config.model.path, dataset=DATASET, he=False, dp=False, mtls=False)
    print(round_table(report))
    print(summary(report))
    write_json(report, options.report)
    plot_rounds(report, options.plot, f"fedprompt demo: {options.participants} sites, {DATASET}")
    print(f"[demo] report {options.report}, plot {options.plot}, {report['seconds']} s")
    return 0 if report["state"] == "done" else 1


def follow(admin: AdminClient, job_id: str, rounds: int, participants: int,  # type: ignore[no-untyped-def]
           procs: list[subprocess.Popen[bytes]]):
    """Show progress until the last round's global version is evaluated by every site."""
    bar = tqdm(total=rounds, desc="rounds", unit="round")
    shown = 0
    while True:
        view = admin.status(job_id)
        done = [r for r in view.rounds if r.state == "done"]
        evaluated = [r for r in done if r.metric_reports >= participants]
        while shown < len(evaluated):
            r = evaluated[shown]
            bar.update(1)
            bar.write(f"round {r.round}: accuracy {r.metrics.get('accuracy', float('nan')):.4f}, "
                      f"loss {r.metrics.get('loss', float('nan')):.4f}, up {r.bytes_up} B, down {r.bytes_down} B, "
                      f"{r.closed_at - r.opened_at:.1f} s")
            shown += 1
        if view.state in ("cancelled", "failed", "paused"):
            bar.close()
            raise FedPromptError(f"job {job_id} is {view.state}: {view.reason}")
        if view.state == "done" and shown >= rounds:
            bar.close()
            return view
        if all(p.poll() is not None for p in procs) and view.state != "done":
            bar.close()
            raise FedPromptError("every participant process exited before the job finished; see the site logs")
        time.sleep(0.5)


def _model_sizes(config: JobConfig) -> tuple[int, int]:
    from fedprompt.models import build_classifier

    model = build_classifier(config)
    return model.plm_parameters, model.vector_size
