"""``--format peft`` exports: a global vector and its job config written as a peft adapter directory
(``fedprompt.models.peft_export``) with a model card (``README.md``) saying what was tuned, on what, and under
which privacy guarantee.  Here, in the app layer, because it needs torch: the coordinator only hands out the
vector (plaintext jobs), and a key holder exports the version it decrypted (``fedprompt participant export``).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedprompt.config import ALL_LINEAR, JobConfig, parse_toml
from fedprompt.errors import ConfigError, FileError

#: What ``--format`` takes: fedprompt's prompt file (``fedprompt predict --prompt``) or a peft adapter directory.
FORMATS = ("prompt", "peft")
#: Files holding a model's weights, hashed into the card so a user can check they load the same base model.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


@dataclass(frozen=True)
class CardFacts:
    """What the card says about the run beyond the job config: who exported which version after how many
    rounds, with how many participants, and the privacy spent (``app.report.privacy_spent``'s keys; ``None``
    where unknown)."""

    job_id: str
    version: int
    source: str
    rounds_completed: int | None = None
    participants: int | None = None
    privacy: dict[str, float | None] = field(default_factory=dict)


def site_facts(state_dir: Path, config_toml: str, meta: dict[str, str]) -> CardFacts:
    """What a participant's state directory says about its latest global (``meta``: its prompt file's metadata):
    the job, the version (one per completed round), and this site's record-level epsilon from its privacy
    ledger where the job fixes delta (by default delta is 1/(10 n) of each site's n, which the state does not
    keep); the participant count and participant-level DP are the coordinator's to report."""
    from fedprompt.participant.dp import RecordAccountant, ledger_path

    config = parse_toml(config_toml, JobConfig, "the job's config")
    job_id, version = meta.get("job_id", ""), int(meta.get("version", "0"))
    try:
        who = json.loads((state_dir / "participant.json").read_text(encoding="utf-8"))["participant_id"]
    except (OSError, ValueError, KeyError, TypeError):
        who = "a participant"
    privacy: dict[str, float | None] = {}
    ledger = ledger_path(state_dir, job_id)
    if config.dp.enabled and config.dp.delta > 0 and ledger.exists():
        privacy = {"epsilon": RecordAccountant(config.dp.accountant, ledger).epsilon(config.dp.delta),
                   "delta": config.dp.delta}
    return CardFacts(job_id=job_id, version=version, source=f"the state of {who} (`fedprompt participant export`)",
                     rounds_completed=version, privacy=privacy)


def out_directory(path: str | Path) -> Path:
    """``--out`` of a peft export: a directory that does not exist yet or is empty (nothing is overwritten)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise FileError(f"--out {out}: exists and is not a directory; a peft export writes a directory")
    if out.is_dir() and any(out.iterdir()):
        raise FileError(f"--out {out}: directory is not empty; give a new or empty directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise FileError(f"--out {out}: {parent} is not a directory")
            break
    return out


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 over the model directory's weight files in name order (each file's name, then its bytes)."""
    digest = hashlib.sha256()
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise ConfigError(f"model.path: {model_dir} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def base_model_name(model_dir: Path) -> str:
    """The base model's name: its config's ``_name_or_path`` where it records one, else the directory's name."""
    try:
        recorded = json.loads((model_dir / "config.json").read_text(encoding="utf-8")).get("_name_or_path", "")
    except (OSError, ValueError):
        recorded = ""
    return str(recorded) if recorded and recorded != str(model_dir) else model_dir.name


def _fmt(value: float | None) -> str:
    return "not reported here" if value is None else f"{value:.4g}"


def model_card(config: JobConfig, facts: CardFacts, task: dict[str, Any], base: Path, version: str,
               when: datetime.datetime) -> str:
    """The adapter's ``README.md``: Hugging Face card metadata, then the facts a user needs to trust and load it."""
    peft = config.peft
    targets = ("every linear layer of the model's blocks (all-linear; adapter_config.json names them)"
               if peft.lora_target_modules == (ALL_LINEAR,) else ", ".join(peft.lora_target_modules) or "peft default")
    knobs = {"prompt": f"{config.model.prompt_length} virtual tokens (shallow prompt)",
             "prefix": f"{config.model.prompt_length} virtual tokens at every layer (prefix tuning, no projection)",
             "lora": f"rank {peft.lora_rank}, alpha {peft.lora_alpha}, dropout {peft.lora_dropout}, target modules "
                     f"{targets}"}[peft.method]
    he = "off (plaintext aggregation)"
    if config.he.threshold_mode:
        params = config.he.threshold_params(len(config.job.allowed_participants))
        he = (f"threshold CKKS: any {params.t} of the {params.members} members decrypt, fewer learn nothing; "
              "the coordinator holds no key share")
    elif config.he.enabled:
        he = (f"single-key CKKS (TenSEAL), polynomial degree {config.he.poly_modulus_degree}, one key held by "
              "every member; the coordinator holds no key")
    privacy = facts.privacy
    unknown = "not known here"
    record = (f"ε = {_fmt(privacy.get('epsilon'))}, δ = {_fmt(privacy.get('delta'))} spent (budget ε = "
              f"{config.dp.epsilon:g})" if config.dp.enabled else "off")
    people = (f"ε = {_fmt(privacy.get('participant_epsilon'))}, δ = {_fmt(privacy.get('participant_delta'))} spent"
              if config.dp.participant_level else "off")
    lines = [
        "---", "library_name: peft", f"base_model: {base_model_name(base)}",
        f"tags: [fedprompt, federated-learning, {peft.method}]", "---", "",
        f"# {config.job.name}: a federated {peft.method} adapter", "",
        f"Tuned by fedprompt federated learning (job `{facts.job_id}`, global version {facts.version}, "
        f"exported from {facts.source}).", "",
        "| | |", "|---|---|",
        f"| base model | `{base_model_name(base)}` (`{config.model.path}`) |",
        f"| base weights SHA-256 | `{weights_sha256(base)}` |",
        f"| backbone kind | {task['kind']} |",
        f"| method | {peft.method}: {knobs} |",
        *_task_rows(config, task),
        f"| rounds completed | {unknown if facts.rounds_completed is None else facts.rounds_completed} "
        f"of {config.job.rounds} |",
        f"| participants | {unknown if facts.participants is None else facts.participants} |",
        f"| record-level DP | {record} |",
        f"| participant-level DP | {people} |",
        f"| homomorphic encryption | {he} |",
        f"| fedprompt version | {version} |",
        f"| exported | {when.strftime('%Y-%m-%d %H:%M:%S')} UTC |", "",
        "## Loading", "",
        "`adapter_config.json` and `adapter_model.safetensors` load with `PeftModel.from_pretrained(base, DIR)`. "
        + (_generation_loading(task) if task["task"] == "generation" else _classification_loading(task)),
        "",
    ]
    return "\n".join(lines)


def _task_rows(config: JobConfig, task: dict[str, Any]) -> list[str]:
    """The card's task rows: the label names and words of a classifier; a generator's generation settings."""
    if task["task"] != "generation":
        return [f"| task | classification: labels {', '.join(config.task.label_names)} |",
                f"| label words | {', '.join(config.task.label_words)} |",
                f"| template | {_code(config.task.template)} |"]
    prompt = ("chat messages rendered by the base tokenizer's chat template, assistant turn opened"
              if task["chat"] else _code(config.task.template))
    return ["| task | generation: a completion of each prompt |",
            f"| prompt format | {prompt} (prompt cut to {config.model.max_length} tokens) |",
            f"| max_new_tokens | {task['max_new_tokens']} |",
            f"| decoding | {task['decoding']} |",
            f"| stop rule | {task['stop']} |"]


def _code(text: str) -> str:
    """``text`` as a one-line code span in a table cell: a JSON string (newlines written ``\\n``), pipes escaped."""
    return "`" + json.dumps(text, ensure_ascii=False).replace("|", "\\|") + "`"


def _classification_loading(task: dict[str, Any]) -> str:
    return ("`fedprompt_task.json` says how fedprompt reads label scores "
            + ("(the label head is in `fedprompt_head.safetensors`: logits = normalize(mean hidden state) @ "
               "weight.T + bias)" if task["kind"] == "encoder" else "(the next-token logits of the label words' "
                                                                    f"first tokens, ids {task.get('label_token_ids')})")
            + ("; the shallow prompt goes right after the first token ([CLS]), not before it as peft's own forward "
               "puts it" if task["prompt_position"] == "after_first_token" else "")
            + ". fedprompt's README (\"Loading an exported adapter\") has a snippet that reproduces its predictions.")


def _generation_loading(task: dict[str, Any]) -> str:
    return ("fedprompt writes a completion by filling the prompt format above, then decoding greedily "
            f"(`generate(..., do_sample=False, max_new_tokens={task['max_new_tokens']})`) and stopping "
            f"{task['stop']}; `fedprompt_task.json` records the same settings. The adapter's virtual tokens or "
            "prefix go before the prompt, where peft's own forward puts them.")


def export_peft(vector: np.ndarray, config_toml: str, out: Path, facts: CardFacts, version: str) -> Path:
    """Write ``vector`` (the exchanged parameters of the job ``config_toml`` describes) into ``out`` as a peft
    adapter directory with its task file and model card; written beside ``out`` and renamed into place.  The
    model is rebuilt on the CPU in float32: an adapter's weights do not depend on where it was trained."""
    from fedprompt.models import build_model
    from fedprompt.models.backbone import resolve_model_path
    from fedprompt.models.peft_export import save_adapter

    config = parse_toml(config_toml, JobConfig, "the job's config")
    if config.blackbox.enabled:
        raise ConfigError("blackbox.enabled: a black-box job's global is a search state scored through the model "
                          "service; export it with --format prompt and use `fedprompt predict`")
    out = out_directory(out)
    base = resolve_model_path(config.model.path)
    model = build_model(config)
    model.set_vector(vector)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        task = save_adapter(model, tmp, str(base), config.task.label_names, config.task.label_words)
        card = model_card(config, facts, task, base, version, datetime.datetime.now(datetime.UTC))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if out.is_dir():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
