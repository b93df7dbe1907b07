"""The parameter-efficient methods side by side (issue 31): a shallow soft prompt (Lester et al. 2021), deep
prompts in every layer (prefix tuning, Li & Liang 2021; P-tuning v2, Liu et al. 2022) and LoRA (Hu et al.
2022), each tuned federatedly on Rotten Tomatoes by IID sites with the same rounds, local steps and batch, on
SmolLM2-135M and on MiniLM, measured in one run.

Each ``rows`` entry is one job: final test accuracy beside the majority class and the untuned model's, the
floats a site exchanges per round (and their share of the PLM's parameters), the CKKS upload those floats
would make (``upload_bytes_he``: one vector encrypted under the default ``[he]`` parameters and its length
taken, as ``bench he`` measures a ciphertext, without running an HE job), mean seconds per round and the
participants' peak RSS.  The sites run in this process, so ``participant_peak_rss_mb`` is the process's
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after the row: a high-water mark over the process's life, so a
row's figure bounds its own peak from above (the rows run in order, the larger backbone last).  The best
method of each backbone runs again with record-level DP-SGD at epsilon 8.

One generation row per backbone that can generate (a causal one): the best method on ``bbc_headlines``
(``[task] kind = "generation"``); "before" is the untuned model as the job's initial adapter scores it (a
random shallow/deep prompt, or for LoRA the identity, i.e. the bare model), "after" the final global adapter.

``peft_roundtrip_max_abs_diff``: every classification row's final adapter exported with ``admin export
--format peft``'s code and loaded by the README's transformers + peft block; the largest |difference|
between its label logits and fedprompt's on a few texts (``fedprompt.app.peft_roundtrip``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fedprompt.app.adapter_export import CardFacts, export_peft
from fedprompt.app.bench.smoke import on_tiny_model, run_size
from fedprompt.app.demo import LR_SCALE, PRIVATE, DemoOptions, demo_job
from fedprompt.app.peft_roundtrip import max_diff_to_fedprompt
from fedprompt.app.report import fmt, jsonable, provenance, table, write_json, write_report_text
from fedprompt.app.simulate import simulate
from fedprompt.config import DPSection, HESection, JobConfig, PeftSection, TaskSection
from fedprompt.config.job import MAX_DEADLINE_S
from fedprompt.config.peft import PEFT_METHODS
from fedprompt.crypto.ckks import SecretContext
from fedprompt.data.datasets import load_dataset, train_test_split
from fedprompt.data.shards import PartitionSpec, SiteData, load_split, split_sites
from fedprompt.errors import ConfigError
from fedprompt.models import Backbone, load_backbone, resolve_placement
from fedprompt.models.backbone import resolve_model_path
from fedprompt.models.placement import Placement
from fedprompt.promptfile import load_prompt

BACKBONES = {"smollm2": "causal", "minilm": "encoder"}
# A starting learning rate per method, the demo's ratios between methods (``LR_SCALE``; not tuned here).
LR = {method: round(0.03 * scale, 6) for method, scale in LR_SCALE.items()}
# The DP row trains as the demo does at epsilon 8 (``fedprompt.app.demo.PRIVATE``: few steps of a large expected
# batch, which shrinks the noise's share of each step; README, "Differential privacy": 0.736-0.746 against 0.627
# with the plain recipe), with the same ratios between methods.
DP_LR = {method: round(PRIVATE.lr * scale, 6) for method, scale in LR_SCALE.items()}
DP_EPSILON = 8.0
# LoRA on the causal backbone adapts all seven projections of every block at rank 4 (0.91 % of SmolLM2's
# parameters) rather than peft's default q/v at rank 8 (0.34 %): adapting every linear layer matters more than the
# rank (Dettmers et al., "QLoRA", 2023, section 4), and the MLP's projections are where a classifier's features
# move.  The encoder keeps peft's default (query/value, rank 8), already 3 points over its prompt.
LORA = {"causal": PeftSection(method="lora", lora_rank=4, lora_alpha=8,
                              lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                   "down_proj")),
        "encoder": PeftSection(method="lora")}
TEXTS = ["A moving, beautifully shot film.", "dull", "Neither good nor bad, and far too long to sit through."]
ROW_KEYS = ("backbone", "method", "task", "accuracy", "majority_accuracy", "zero_shot_accuracy", "exchanged_floats",
            "exchanged_over_plm", "upload_bytes_he", "seconds_per_round", "participant_peak_rss_mb", "dp_epsilon")
GENERATION_KEYS = ("exact_match_before", "exact_match_after", "rouge_l_before", "rouge_l_after", "loss_before",
                   "loss_after", "before_is")
TARGETS = {"best_smollm2": 0.86, "best_smollm2_dp": 0.84, "deep_over_shallow_points": 2.0,
           "deep_exchanged_over_plm": 0.01, "roundtrip": 1e-4}


@dataclasses.dataclass(frozen=True)
class Size:
    """How big a run is: the measured one, or ``--smoke``'s, which takes the same path in seconds."""

    sites: int
    rounds: int
    steps: int  # local steps per site and round, every method
    batch_size: int
    train_size: int  # Rotten Tomatoes training examples dealt to the sites
    test_size: int
    gen_train_size: int
    gen_test_size: int
    max_new_tokens: int
    dp_batch_size: int  # the DP row's expected (Poisson) batch
    dp_steps: int
    methods: tuple[str, ...] = PEFT_METHODS
    backbones: tuple[str, ...] = tuple(BACKBONES)


FULL = Size(sites=3, rounds=5, steps=30, batch_size=16, train_size=8000, test_size=1000, gen_train_size=600,
            gen_test_size=100, max_new_tokens=16, dp_batch_size=PRIVATE.batch_size, dp_steps=PRIVATE.steps)
SMOKE = Size(sites=2, rounds=1, steps=2, batch_size=4, train_size=24, test_size=12, gen_train_size=12,
             gen_test_size=4, max_new_tokens=3, dp_batch_size=4, dp_steps=2)


def parse_list(value: str | None, allowed: tuple[str, ...], flag: str) -> tuple[str, ...] | None:
    """``--methods a,b`` as a tuple, every name checked (a ``ConfigError`` naming the first unknown one)."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    for name in names:
        if name not in allowed:
            raise ConfigError(f"--{flag}: {name!r} is not one of {', '.join(allowed)}")
    if not names:
        raise ConfigError(f"--{flag}: name at least one of {', '.join(allowed)}")
    return names


def bench_size(args: argparse.Namespace) -> Size:
    size = run_size(args, FULL, SMOKE, "sites", "rounds", "steps", "train_size", "test_size")
    methods = parse_list(args.methods, PEFT_METHODS, "methods") or size.methods
    backbones = parse_list(args.backbones, tuple(BACKBONES), "backbones") or size.backbones
    return dataclasses.replace(size, methods=methods, backbones=backbones)


def base_job(name: str, size: Size, args: argparse.Namespace) -> JobConfig:
    """The demo's job on backbone ``name`` (the tiny random one of its kind with ``--smoke``), plaintext, sized."""
    kind = BACKBONES[name]
    config = demo_job(DemoOptions(participants=size.sites, rounds=size.rounds, seed=args.seed, he=False, dp=False,
                                  backbone=kind, steps=size.steps, batch_size=size.batch_size))
    # an accuracy bench, not a liveness one: a round may take as long as the cores need (the demo's 900 s
    # deadline ended a run on 2 busy cores)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, kind=kind),
                                 job=dataclasses.replace(config.job, round_deadline_s=MAX_DEADLINE_S))
    return on_tiny_model(config, kind) if args.smoke else config


def with_method(config: JobConfig, method: str, epsilon: float | None, size: Size) -> JobConfig:
    """``config`` tuning ``method``: the bench's plain recipe, or with ``epsilon`` record-level DP-SGD with the
    demo's large-batch one (``DP_LR``)."""
    train = (dataclasses.replace(config.train, lr=LR[method]) if epsilon is None else
             dataclasses.replace(config.train, lr=DP_LR[method], batch_size=size.dp_batch_size,
                                 max_steps=size.dp_steps))
    peft = LORA[config.model.kind] if method == "lora" else PeftSection(method=method)
    return dataclasses.replace(config, peft=peft, train=train,
                               dp=DPSection(enabled=epsilon is not None, epsilon=epsilon or DPSection.epsilon))


def peak_rss_mb() -> float:
    """The process's peak RSS so far (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def roundtrip(report: dict[str, Any], config: JobConfig, work: Path) -> float:
    """Export the job's final global adapter (the prompt file ``simulate`` wrote) as a PEFT adapter and compare
    the README loader's label logits with fedprompt's."""
    vector, config_toml = load_prompt(Path(report["exported"]))
    facts = CardFacts(job_id=report["job_id"], version=len(report["rounds"]) - 1, source="fedprompt bench peft")
    out = export_peft(vector, config_toml, work / f"adapter-{report['job_id']}", facts, "bench")
    return max_diff_to_fedprompt(vector, config, Path(resolve_model_path(config.model.path)), out, TEXTS)


def fresh(config: JobConfig, placement: Placement) -> Backbone:
    """The job's frozen PLM loaded anew: LoRA wraps the loaded model's layers, so no two jobs share one."""
    return load_backbone(config.model.path, config.model.kind, placement=placement)


def run_row(name: str, job: JobConfig, sites: list[SiteData], placement: Placement, work: Path,
            secret: SecretContext) -> tuple[dict[str, Any], dict[str, Any]]:
    epsilon = job.dp.epsilon if job.dp.enabled else None
    export = work / f"{name}-{job.peft.method}-{epsilon}.safetensors"
    report = simulate(job, sites, fresh(job, placement), export=export)
    seconds = [r["seconds"] for r in report["rounds"]]
    vector = np.zeros(report["exchanged_floats"], dtype=np.float32)
    row = {"backbone": name, "method": job.peft.method, "task": "classification",
           "accuracy": report["final_accuracy"], "majority_accuracy": report["majority_accuracy"],
           "zero_shot_accuracy": report["zero_shot_accuracy"], "exchanged_floats": report["exchanged_floats"],
           "exchanged_over_plm": report["exchanged_over_plm"], "upload_bytes_he": len(secret.encrypt(vector, 1)),
           "seconds_per_round": sum(seconds) / len(seconds) if seconds else None,
           "participant_peak_rss_mb": peak_rss_mb(), "dp_epsilon": epsilon, "epsilon_spent": report["epsilon"]}
    print(f"[bench peft] {name}/{job.peft.method} eps {epsilon}: accuracy {fmt(row['accuracy'])} "
          f"({row['exchanged_floats']} floats) in {report['seconds']:.0f} s", flush=True)
    return row, report


def generation_sites(size: Size, seed: int) -> list[SiteData]:
    train, test = train_test_split(load_dataset("bbc_headlines").examples, size.gen_test_size, seed)
    return split_sites(train[:size.gen_train_size], test, (), size.sites, PartitionSpec("iid"), seed)


def generation_row(name: str, config: JobConfig, method: str, size: Size, placement: Placement,
                   seed: int) -> dict[str, Any]:
    job = with_method(dataclasses.replace(config, task=TaskSection(
        kind="generation", template="{text}\nHeadline:", max_new_tokens=size.max_new_tokens)), method, None, size)
    report = simulate(job, generation_sites(size, seed), fresh(job, placement))
    final = report["rounds"][-1] if report["rounds"] else {}
    row = {"backbone": name, "method": method, "task": "generation",
           "exact_match_before": report["zero_shot_exact_match"], "exact_match_after": report["final_exact_match"],
           "rouge_l_before": report["zero_shot_rouge_l"], "rouge_l_after": report["final_rouge_l"],
           "loss_before": report["zero_shot_loss"], "loss_after": final.get("loss"),
           "before_is": "the bare model (LoRA's initial adapter is the identity)" if method == "lora"
           else f"the initial (random) {method} adapter"}
    print(f"[bench peft] {name}/{method} generation: ROUGE-L {fmt(row['rouge_l_before'])} -> "
          f"{fmt(row['rouge_l_after'])}", flush=True)
    return row


def best(rows: list[dict[str, Any]], backbone: str) -> dict[str, Any] | None:
    plain = [r for r in rows if r["backbone"] == backbone and r["dp_epsilon"] is None and r["accuracy"] is not None]
    return max(plain, key=lambda r: r["accuracy"]) if plain else None


def dp_method_for(args: argparse.Namespace, top: dict[str, Any] | None) -> str | None:
    """The method of the epsilon-8 row: ``--dp-method``, else the best plain one; None with ``--skip-dp`` or when
    neither names one (no classification rows ran)."""
    if args.skip_dp:
        return None
    if args.dp_method is not None:
        return str(args.dp_method)
    return top["method"] if top else None


def targets(rows: list[dict[str, Any]], generation: list[dict[str, Any]], diff: float | None) -> dict[str, Any]:
    """Issue 31's targets, each with the measured figure and ``met`` (None where the run did not measure it)."""
    top = best(rows, "smollm2")
    dp = [r for r in rows if r["backbone"] == "smollm2" and r["dp_epsilon"] == DP_EPSILON]
    margins = []
    for name in {r["backbone"] for r in rows}:
        plain = {r["method"]: r for r in rows if r["backbone"] == name and r["dp_epsilon"] is None}
        if "prompt" in plain and plain["prompt"]["accuracy"] is not None:
            margins += [100 * (r["accuracy"] - plain["prompt"]["accuracy"]) for m, r in plain.items()
                        if m != "prompt" and r["accuracy"] is not None
                        and r["exchanged_over_plm"] <= TARGETS["deep_exchanged_over_plm"]]
    gain = [r["rouge_l_after"] - r["rouge_l_before"] for r in generation
            if r["rouge_l_after"] is not None and r["rouge_l_before"] is not None]

    def target(value: float | None, goal: float, test: Any = float.__ge__) -> dict[str, Any]:
        return {"value": value, "target": goal, "met": None if value is None else bool(test(float(value), goal))}

    return {"best_smollm2_accuracy": target(top["accuracy"] if top else None, TARGETS["best_smollm2"]),
            "best_smollm2_accuracy_dp_eps8": target(dp[0]["accuracy"] if dp else None, TARGETS["best_smollm2_dp"]),
            "deep_or_lora_over_prompt_points": target(max(margins) if margins else None,
                                                      TARGETS["deep_over_shallow_points"]),
            "generation_rouge_l_gain": target(max(gain) if gain else None, 0.0, float.__gt__),
            "peft_roundtrip_max_abs_diff": target(diff, TARGETS["roundtrip"], float.__le__)}


def settings(size: Size, args: argparse.Namespace, placement: Placement) -> dict[str, Any]:
    """What a run measured under: ``--resume`` goes on only with a report of the same."""
    return {"sites": size.sites, "rounds": size.rounds, "steps_per_site_round": size.steps,
            "batch_size": size.batch_size, "lr": LR, "train_size": size.train_size,
            "test_size": size.test_size, "partition": "iid", "dataset": "rotten_tomatoes",
            "generation_dataset": "bbc_headlines", "generation_train_size": size.gen_train_size,
            "generation_test_size": size.gen_test_size, "max_new_tokens": size.max_new_tokens,
            "dp_epsilon": DP_EPSILON, "dp_batch_size": size.dp_batch_size,
            "dp_steps_per_site_round": size.dp_steps, "dp_lr": DP_LR,
            "he_params": HESection(enabled=True, mode="single_key").params().describe(),
            "placement": placement.label, "seed": args.seed, "methods": size.methods,
            "backbones": size.backbones, "skipped": [part for part in ("classification", "dp", "generation")
                                                     if getattr(args, f"skip_{part}")],
            "dp_method": args.dp_method, "lora": LORA,
            "peak_rss": "resource.getrusage(RUSAGE_SELF).ru_maxrss after the row (process high-water mark)",
            "roundtrip_texts": TEXTS}


@dataclasses.dataclass
class Run:
    """The rows measured so far, by this process and (``--resume``) by the earlier ones of the same run, each
    row naming the process that measured it (``run``: an index into ``runs``, their provenance)."""

    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    generation: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    diffs: dict[str, float] = dataclasses.field(default_factory=dict)
    runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def measured(self, backbone: str, method: str, epsilon: float | None = None) -> bool:
        return any((r["backbone"], r["method"], r["dp_epsilon"]) == (backbone, method, epsilon) for r in self.rows)

    def generated(self, backbone: str) -> bool:
        return any(r["backbone"] == backbone for r in self.generation)

    def add(self, row: dict[str, Any], generation: bool = False) -> None:
        (self.generation if generation else self.rows).append({**row, "run": len(self.runs) - 1})


def resumed(path: str, expected: dict[str, Any]) -> Run:
    """The unfinished run in the report at ``path`` (``--resume``), to go on with: its rows are kept and only the
    missing ones measured.  Its settings must be this run's (the same flags), so every row of the table still
    comes from one configuration; a complete report, or one that cannot be read, is refused by name."""
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8"))
        stored, rows = old["settings"], old["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--resume: cannot read an earlier bench peft report at {path} ({exc})") from exc
    if old.get("complete"):
        raise ConfigError(f"--resume: {path} is complete; nothing to go on with")
    wanted = jsonable(expected)  # the JSON data write_json stored: tuples as lists
    differ = sorted(k for k in wanted.keys() | stored.keys() if wanted.get(k) != stored.get(k))
    if differ:
        raise ConfigError(f"--resume: {path} was measured with other settings ({', '.join(differ)}); "
                          "resume with its flags, or start a new report")
    runs = old.get("runs") or [old["provenance"]]
    keep = [{**r, "run": r.get("run", 0)} for r in rows]
    return Run([r for r in keep if r["task"] == "classification"], [r for r in keep if r["task"] == "generation"],
               dict(old.get("peft_roundtrip") or {}), runs + [provenance()])


def report(run: Run, size: Size, args: argparse.Namespace, placement: Placement, complete: bool) -> dict[str, Any]:
    """The JSON report of the rows measured so far (``complete`` once every row asked for is in)."""
    diff = max(run.diffs.values()) if run.diffs else None
    # one schema for every row: a classification row's generation keys and a generation row's are null
    table_rows = [{k: r.get(k) for k in (*ROW_KEYS, "epsilon_spent", *GENERATION_KEYS, "run")}
                  for r in run.rows + run.generation]
    return {"rows": table_rows, "peft_roundtrip_max_abs_diff": diff, "peft_roundtrip": run.diffs,
            "targets": targets(run.rows, run.generation, diff), "complete": complete,
            "settings": settings(size, args, placement), "runs": run.runs, "smoke": bool(args.smoke),
            "provenance": run.runs[-1]}  # this process's, taken once at its start (``runs``' last)


def _num(value: float | None, digits: int, suffix: str = "") -> str:
    return "—" if value is None else f"{value:,.{digits}f}{suffix}"


def markdown(out: dict[str, Any]) -> str:
    """The report's rows as the README's Markdown tables, with where they come from: written beside the JSON
    (``bench-peft.md``) at every save, so a README quotes the run rather than retyping it (a test holds the
    README's table to the committed report's)."""
    lines = ["| backbone | method | ε | accuracy | majority | zero-shot | exchanged floats | of the PLM | HE upload B "
             "| s/round | peak RSS MB | run |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (r for r in out["rows"] if r["task"] == "classification"):
        eps = "—" if r["dp_epsilon"] is None else f"{r['dp_epsilon']:g} (spent {_num(r['epsilon_spent'], 3)})"
        lines.append(f"| {r['backbone']} | {r['method']} | {eps} | {_num(r['accuracy'], 3)} | "
                     f"{_num(r['majority_accuracy'], 3)} | {_num(r['zero_shot_accuracy'], 3)} | "
                     f"{r['exchanged_floats']:,} | {_num(100 * r['exchanged_over_plm'], 3, ' %')} | "
                     f"{r['upload_bytes_he']:,} | {_num(r['seconds_per_round'], 1)} | "
                     f"{_num(r['participant_peak_rss_mb'], 0)} | {r['run']} |")
    generation = [r for r in out["rows"] if r["task"] == "generation"]
    if generation:
        lines += ["", "| backbone | method | task | exact match | ROUGE-L | per-token loss | run |",
                  "|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['backbone']} | {r['method']} | generation | {_num(r['exact_match_before'], 2)} → "
                  f"{_num(r['exact_match_after'], 2)} | {_num(r['rouge_l_before'], 3)} → {_num(r['rouge_l_after'], 3)}"
                  f" | {_num(r['loss_before'], 2)} → {_num(r['loss_after'], 2)} | {r['run']} |" for r in generation]
    unmeasured = ("Round trip: not measured (it exports the plain classification rows' adapters; this run has none)."
                  if out["complete"] else "Round trip: not measured yet.")
    lines += ["", f"Round trip through the exported peft adapters: max |diff| {out['peft_roundtrip_max_abs_diff']:.1e}"
              if out["peft_roundtrip_max_abs_diff"] is not None else unmeasured, ""]
    lines += [f"- run {i}: `{p['command']}`, commit {p['commit']}{' (uncommitted changes)' if p['dirty'] else ''}, "
              f"{p['date']}, {p['machine']['cpus']} CPUs" for i, p in enumerate(out["runs"])]
    return "\n".join(lines) + "\n"


def markdown_path(report_path: str) -> Path:
    """Where the Markdown goes: beside the report, its suffix ``.md`` (``--report x.md``: ``x.md.md``, not over
    the JSON)."""
    path = Path(report_path)
    return path.with_name(f"{path.name}.md") if path.suffix == ".md" else path.with_suffix(".md")


def main(args: argparse.Namespace) -> int:
    import torch

    size = bench_size(args)
    placement = resolve_placement(args.device, args.dtype, "")
    if args.smoke:
        torch.set_num_threads(1)  # the test suite's budget; a measured run keeps torch's own thread count
    secret = SecretContext.create(HESection(enabled=True, mode="single_key").params())
    path = args.report or "reports/bench-peft.json"
    run = resumed(path, settings(size, args, placement)) if args.resume else Run(runs=[provenance()])

    def save(complete: bool = False) -> dict[str, Any]:
        """Write the report as it stands: a run stopped after an hour's rows keeps them (``"complete": false``),
        and ``--resume`` goes on from there."""
        out = report(run, size, args, placement, complete)
        write_report_text(markdown(write_json(out, path)), markdown_path(path))
        return out

    with tempfile.TemporaryDirectory(prefix="fedprompt-bench-peft-") as tmp:
        work = Path(tmp)
        for name in size.backbones:
            base = base_job(name, size, args)
            train, test, names = load_split("rotten_tomatoes", size.test_size, args.seed, base.task.label_names)
            sites = split_sites(train[:size.train_size], test, names, size.sites, PartitionSpec("iid"), args.seed)
            for method in () if args.skip_classification else size.methods:
                if run.measured(name, method):
                    continue
                config = with_method(base, method, None, size)
                row, result = run_row(name, config, sites, placement, work, secret)
                run.add(row)
                run.diffs[f"{name}/{method}"] = roundtrip(result, config, work)
                save()
            top = best(run.rows, name)
            dp_method = dp_method_for(args, top)
            if dp_method is not None and not run.measured(name, dp_method, DP_EPSILON):
                run.add(run_row(name, with_method(base, dp_method, DP_EPSILON, size), sites, placement, work,
                                secret)[0])
                save()
            if (BACKBONES[name] == "causal" and not args.skip_generation
                    and not run.generated(name)):
                # the best method, or without classification rows the first one named
                run.add(generation_row(name, base, top["method"] if top else size.methods[0], size, placement,
                                       args.seed), generation=True)
                save()
    out = save(complete=True)
    print(table(["backbone", "method", "eps", "accuracy", "majority", "zero-shot", "floats", "over PLM", "HE bytes",
                 "s/round", "rss MB"],
                [[r["backbone"], r["method"], r["dp_epsilon"], r["accuracy"], r["majority_accuracy"],
                  r["zero_shot_accuracy"], r["exchanged_floats"], r["exchanged_over_plm"], r["upload_bytes_he"],
                  r["seconds_per_round"], r["participant_peak_rss_mb"]] for r in run.rows]))
    for r in run.generation:
        print(f"generation {r['backbone']}/{r['method']}: exact match {fmt(r['exact_match_before'])} -> "
              f"{fmt(r['exact_match_after'])}, ROUGE-L {fmt(r['rouge_l_before'])} -> {fmt(r['rouge_l_after'])}, "
              f"loss {fmt(r['loss_before'])} -> {fmt(r['loss_after'])}")
    print(f"peft round trip max |diff| {fmt(out['peft_roundtrip_max_abs_diff'], 8)}; targets: "
          + ", ".join(f"{k} {'met' if t['met'] else 'not met' if t['met'] is False else '-'}"
                      for k, t in out["targets"].items()))
    return 0
