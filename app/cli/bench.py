"""``fedprompt bench NAME``: run a benchmark (the benchmarks themselves are in :mod:`fedprompt.app.bench`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedprompt.app.bench import BENCHES
from fedprompt.app.cli.common import add_command, add_placement_args, add_track_flag
from fedprompt.config.peft import PEFT_METHODS

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_bench(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from fedprompt.app.bench import run_bench
    from fedprompt.app.tracking import flat_params, load_report, tracking
    from fedprompt.files import writable

    args.report = args.report or f"reports/bench-{args.name}.json"  # each bench's default, named here for --track
    writable(args.report, "--report")  # before the benchmark, not after it
    options = {k: v for k, v in vars(args).items()
               if k not in ("fn", "track", "command", "log_level", "json_logs") and v is not None}
    with tracking(args.track, f"bench-{args.name}", flat_params(options)) as track:
        started = time.time()
        code = run_bench(args.name, args)
        if track.sinks:
            plot = Path(args.report).with_suffix(".png")  # the benches that plot write it beside the report
            this_run = plot if plot.is_file() and plot.stat().st_mtime >= started else None  # not an older run's
            track.finish(load_report(args.report), [args.report, this_run], failed=code != 0)
    return code


def register(sub: Subparsers) -> None:
    """``bench NAME``, with each benchmark's options."""
    bench = add_command(sub, "bench", "benchmarks: print a table and write a JSON report",
                         "fedprompt bench federated --report reports/bench-federated.json")
    bench.add_argument("name", choices=sorted(BENCHES), help="which benchmark")
    bench.add_argument("--report", help="JSON report path (default reports/bench-NAME.json); peft also writes its "
                                        "tables as Markdown beside it (suffix .md)")
    bench.add_argument("--smoke", action="store_true",
                       help="run the bench's code path on a tiny random model and a few examples in seconds: its "
                            "figures mean nothing, its report has every key (the test suite runs each bench so)")
    bench.add_argument("--seed", type=int, default=0,
                       help="seed for splits, partitions, prompts and training (fewshot: the first seed) (default 0)")
    bench.add_argument("--seeds", type=int,
                       help="fewshot, robust: repeat on seeds SEED..SEED+N-1, report mean and sd (default 3, with "
                            "--smoke 1; fewshot: one seed of both datasets takes ~100 min on 2 cores)")
    bench.add_argument("--dataset", action="append", metavar="NAME",
                       help="fewshot: only this dataset, rotten_tomatoes or bbc_news; repeatable (default both)")
    bench.add_argument("--shots", type=int, default=32,
                       help="fewshot: mean labelled examples per site, the rest of its share unlabelled (default 32)")
    bench.add_argument("--participants", type=int, help="load: concurrent participants (default 200)")
    bench.add_argument("--rounds", type=int, help="load: rounds (default 5); failover: rounds per job (default 8); peft: rounds (default 5)")
    bench.add_argument("--trials", type=int,
                       help="failover: jobs, each with its active coordinator SIGKILLed mid-round (default 5)")
    bench.add_argument("--clients", type=int, help="load: client processes simulating them (default 4)")
    bench.add_argument("--stalled", type=int, help="stalls: upload streams that send a header and stall (default 200)")
    bench.add_argument("--identities", type=int,
                       help="stalls: certificates the stalled streams and idle connections come from (default 20)")
    bench.add_argument("--idle", type=int, help="stalls: TLS connections that make no call (default 200)")
    bench.add_argument("--waves", type=int,
                       help="stalls: times the attack is repeated, each on a fresh round (default 2; more show whether "
                            "the memory after a wave keeps growing)")
    bench.add_argument("--steps", type=int,
                       help="peft: local steps per site and round, every method (default 30).  `bench peft --report peft.json` "
                            "at its defaults: sized to finish in under an hour on one GPU; on 2 CPU cores with --dtype bfloat16 a "
                            "SmolLM2 row took 18-31 min and the whole run more than a 3 h session (--resume goes on with it)")
    bench.add_argument("--sites", type=int, help="peft: IID sites (default 3)")
    bench.add_argument("--train-size", type=int,
                       help="peft: Rotten Tomatoes training examples dealt to the sites (default 8000)")
    bench.add_argument("--test-size", type=int, help="peft: held-out test examples (default 1000)")
    bench.add_argument("--methods", help="peft: comma-separated subset of prompt,prefix,lora, measured in that order (default "
                            "all)")
    bench.add_argument("--backbones", help="peft: comma-separated subset of smollm2,minilm (default both)")
    bench.add_argument("--skip-generation", action="store_true",
                       help="peft: leave out the generation row (bbc_headlines on SmolLM2)")
    bench.add_argument("--skip-classification", action="store_true",
                       help="peft: leave out the Rotten Tomatoes rows (the generation row then tunes the first of "
                            "--methods)")
    bench.add_argument("--skip-dp", action="store_true", help="peft: leave out the best method's row at epsilon 8")
    bench.add_argument("--resume", action="store_true",
                       help="peft: go on with the unfinished run whose report is --report (a run stopped midway, say at "
                            "the end of a session): its rows are kept, each naming the run that measured it, and only the "
                            "missing ones are measured; refused unless its settings are this command's")
    bench.add_argument("--dp-method", choices=PEFT_METHODS,
                       help="peft: the method of the epsilon 8 row (default the best one without DP; with "
                            "--skip-classification the row runs only when this names one)")
    add_placement_args(bench)
    add_track_flag(bench)
    bench.set_defaults(fn=cmd_bench)
