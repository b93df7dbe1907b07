"""``fedprompt simulate``: run a job with many participants in one process (no sockets)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fedprompt.app.cli.common import add_command, add_plan_args, load_summary, parse_overrides, plan_overrides

if TYPE_CHECKING:
    from fedprompt.app.cli.common import Subparsers


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprompt.app.report import attack_summary, majority_warning, round_table, summary, write_json
    from fedprompt.app.simulate import load_simulation, parse_simulation, simulate
    from fedprompt.files import writable

    if args.report:
        writable(args.report, "--report")  # before the run, not after it
    overrides = {**parse_overrides(args.set), **plan_overrides(args, "simulation.")}
    sim = load_simulation(args.config, overrides) if args.config else parse_simulation("", overrides=overrides)
    sites, read = sim.simulation.deal(sim.job.task.label_names)
    print(load_summary(sim.simulation.dataset, read))
    report = simulate(sim.job, sites, attack=sim.attack)
    print(round_table(report))
    print(summary(report))
    if warning := majority_warning(report):
        print(warning)
    if "attack" in report:
        print(attack_summary(report))
    if args.report:
        write_json(report, args.report)
    return 0


def register(sub: Subparsers) -> None:
    """``simulate``."""
    sim = add_command(sub, "simulate", "run a job with many participants in one process (no sockets)",
                      "fedprompt simulate --config examples/backdoor.toml --report reports/backdoor.json",
                      description="A simulation file is a job TOML plus optional [simulation] (data, sites, "
                                     "partition) and [attack] (attack simulator) tables; flags override them.")
    sim.add_argument("--config", help="simulation TOML, e.g. examples/backdoor.toml (default: built-in defaults)")
    sim.add_argument("--report", help="write the JSON report here")
    sim.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a key, e.g. job.aggregator=\"multi_krum\" or attack.scale=1")
    add_plan_args(sim)
    sim.set_defaults(fn=cmd_simulate)
