"""``fedprompt predict``: classify texts with an exported prompt, or complete them for a generation job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, add_placement_args
from fedprompt.errors import FedPromptError

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def _texts(args: argparse.Namespace) -> list[str]:
    """The texts to classify: the arguments, else the lines of ``--texts`` FILE, else of standard input; a file
    or input that is not UTF-8 text is refused by name."""
    from fedprompt.files import decode_text, read_text

    if args.text:
        return list(args.text)
    if args.texts:
        text = read_text(args.texts, "--texts file")
    else:
        text = decode_text(sys.stdin.buffer.read(), "<stdin>", "standard input")
    return [line.strip() for line in text.splitlines() if line.strip()]


def cmd_predict(args: argparse.Namespace) -> int:
    from fedprompt.app.admin_client import load_prompt
    from fedprompt.config import JobConfig, check_placement, parse_toml

    if args.text and args.texts:
        raise FedPromptError("give texts as arguments or with --texts FILE, not both")
    if not 1 <= args.batch_size <= 4096:
        raise FedPromptError(f"--batch-size: must be in [1, 4096], got {args.batch_size}")
    check_placement("", args.device, args.dtype)  # the spelling before loading torch; whether the GPU is there below
    vector, config_toml = load_prompt(Path(args.prompt))  # the inputs first: torch loads only for a valid call
    config = parse_toml(config_toml, JobConfig, str(args.prompt))
    texts = _texts(args)

    from fedprompt.models import build_classifier, build_model, load_backbone, resolve_placement

    placement = resolve_placement(args.device, args.dtype, "")

    if config.task.kind == "generation":
        from fedprompt.models.generator import PromptGenerator

        generator = build_model(config, placement=placement)
        assert isinstance(generator, PromptGenerator)
        generator.set_vector(vector)
        for text, completion in zip(texts, generator.generate(texts, args.batch_size), strict=True):
            print(json.dumps({"text": text, "completion": completion}))
        return 0
    if config.blackbox.enabled:  # the export is a search state: score p0 + A z on a local model host
        from fedprompt.participant.learners import local_learner

        learner = local_learner(config, load_backbone(config.model.path, config.model.kind))
        probabilities = learner.predict_proba(vector, texts)
    else:
        model = build_classifier(config, placement=placement)
        model.set_vector(vector)
        probabilities = model.predict_proba(texts, args.batch_size)
    for text, probs in zip(texts, probabilities, strict=True):
        best = int(probs.argmax())
        print(json.dumps({"text": text, "label": config.task.label_names[best], "confidence": round(float(probs[best]), 4)}))
    return 0


def register(sub: Subparsers) -> None:
    """``predict``."""
    predict = add_command(sub, "predict", "classify texts (or complete prompts of a generation job) with an exported prompt",
                           'fedprompt predict --prompt prompt.safetensors "A moving, beautifully shot film."')
    predict.add_argument("--prompt", required=True, help="file written by `fedprompt admin export`")
    predict.add_argument("--texts", help="a UTF-8 file of texts to classify (or prompts to complete), one per line")
    predict.add_argument("--batch-size", type=int, default=16,
                         help="texts per forward pass, or prompts decoded together (greedy, left-padded: the same "
                              "completions as one at a time); bounds memory only (default 16)")
    add_placement_args(predict)
    predict.add_argument("text", nargs="*", help="texts to classify (default: one per line of --texts or stdin)")
    predict.set_defaults(fn=cmd_predict)
