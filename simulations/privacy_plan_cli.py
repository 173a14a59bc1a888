"""``implantfl-sim privacy-plan``: the noise a run needs for a target epsilon, and its spend per round.

Mounted by ``simulations.cli`` through :func:`add_parser`; :func:`run` is the command.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from common.privacy_plan import ACCOUNTANTS, PrivacyPlan, plan


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``privacy-plan`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "privacy-plan",
        help="noise multiplier needed for a target epsilon, and epsilon after each round",
        description="Plan DP-SGD for a run: the noise multiplier that spends at most the target "
                    "epsilon after the last round (sample rate = batch size / examples, "
                    "steps per round = epochs * ceil(examples / batch size)).",
    )
    p.add_argument("--rounds", type=int, required=True, help="federated rounds")
    p.add_argument("--epochs", type=int, required=True, help="local epochs per round")
    p.add_argument("--batch-size", type=int, required=True, help="expected (Poisson) batch size")
    p.add_argument("--examples", type=int, required=True, help="training examples at the site")
    p.add_argument("--target-epsilon", type=float, required=True, help="epsilon allowed after the last round")
    p.add_argument("--delta", type=float, default=1e-5, help="target delta (default 1e-5)")
    p.add_argument("--accountant", choices=ACCOUNTANTS, default="rdp", help="privacy accountant (default rdp)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
    return p


def _print_table(result: PrivacyPlan) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"noise multiplier [bold]{result.noise_multiplier:.4f}[/bold] "
        f"(sample rate {result.sample_rate:.4g}, {result.steps_per_round} steps per round, "
        f"delta {result.delta:g}, {result.accountant} accountant)"
    )
    table = Table(title=f"epsilon after each round (target {result.target_epsilon:g})")
    table.add_column("round", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("epsilon", justify="right")
    for number, eps in enumerate(result.epsilon_per_round, start=1):
        table.add_row(str(number), str(number * result.steps_per_round), f"{eps:.3f}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    """Plan and print; return the exit status (errors raise :class:`common.errors.ConfigError`)."""
    result = plan(
        rounds=args.rounds, epochs=args.epochs, batch_size=args.batch_size, examples=args.examples,
        target_epsilon=args.target_epsilon, delta=args.delta, accountant=args.accountant,
    )
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
    else:
        _print_table(result)
    return 0
