"""``fedprompt demo``: coordinator and participant processes over loopback gRPC, end to end."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, add_track_flag
from fedprompt.config.peft import PEFT_METHODS

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_demo(args: argparse.Namespace) -> int:
    from fedprompt.app.demo import options_from_args, run_demo

    return run_demo(options_from_args(args))


def register(sub: Subparsers) -> None:
    """``demo``."""
    demo = add_command(sub, "demo", "coordinator + participant processes over loopback gRPC, end to end",
                        "fedprompt demo --no-dp --rounds 3 --workdir demo-run")
    demo.add_argument("--participants", type=int, default=3, help="participant processes (default 3)")
    demo.add_argument("--rounds", type=int, default=5, help="aggregation rounds (default 5)")
    demo.add_argument("--steps", type=int,
                      help="local training steps per participant per round (default 4 with DP, 30 without; causal 30)")
    demo.add_argument("--backbone", choices=["encoder", "causal"], default="encoder",
                      help="encoder = all-MiniLM-L6-v2 (default, fast); causal = SmolLM2-135M-Instruct")
    demo.add_argument("--method", choices=PEFT_METHODS, default="prompt",
                      help="what the sites tune and exchange: a shallow soft prompt (default), deep prompts in every "
                           "layer (prefix) or LoRA; learning rates scale with the method (README, methods)")
    demo.add_argument("--test-size", type=int, default=1000,
                      help="examples held out as the test split (default 1000)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed for the split, partition, initial prompt and training (default 0)")
    demo.add_argument("--dp", action=argparse.BooleanOptionalAction, default=True,
                      help="record-level DP-SGD at --epsilon (default on; --no-dp trains without it, ~3x faster)")
    demo.add_argument("--epsilon", type=float, default=8.0,
                      help="record-level privacy budget per site for the whole job (default 8)")
    demo.add_argument("--batch-size", type=int,
                      help="local batch, with DP the expected Poisson batch (default 256 with DP, 16 without; "
                           "causal 8). DP noise is added once per step, so a large batch keeps accuracy: see README, "
                           "differential privacy")
    demo.add_argument("--lr", type=float, help="local learning rate (default 0.1 with DP, 0.01 without; causal 0.003)")
    demo.add_argument("--report", default="reports/demo.json", help="JSON report path (default reports/demo.json)")
    demo.add_argument("--plot", default="reports/demo.png", help="PNG plot path (default reports/demo.png)")
    demo.add_argument("--workdir", help="keep data, state and logs here (default: a temporary directory)")
    demo.add_argument("--insecure", action="store_true",
                      help="plaintext, unverified identities (default: mTLS with a throwaway CA)")
    demo.add_argument("--no-he", action="store_true",
                      help="aggregate in plaintext (default: CKKS-encrypted aggregation, coordinator sees no update)")
    add_track_flag(demo)
    demo.set_defaults(fn=cmd_demo)
