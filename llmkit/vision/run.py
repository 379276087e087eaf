"""`python -m llmkit.vision.run <experiment>`: each method's CPU check on digits, over several seeds.

Prints a table (mean ± std over seeds), and writes a learning-curve / result PNG, a results.json and
the README block (table.md: title, table, seeds, date, machine, command) under --out (default
outputs/vision/<experiment>). Each experiment is one module in `llmkit.vision.experiments`.
The library never edits its README: `python benchmarks/vision_tables.py <experiment> [options]` runs
the same command and then copies each table.md into llmkit/vision/README.md between its markers
(`--collect` copies the table.md files already under outputs/vision).

Experiments:
  dpc        CE vs DPC's evidential loss (± GMM clean-sample selection) vs BLDR-lite, on noisy labels
  openset-al random / entropy / LfOSA / EAOA / BUAL / E2OAL / DCFS on open-set digits (known 0-5, unknown 6-9):
             query precision
  dhkd       student CE / KD / BinaryKL / DHKD (± gradient alignment) / DHKD+KD
  l2d        multi-label student: BCE / BCE+MLD / L2D (synthetic multi-label data)
  cap        semi-supervised multi-label: supervised / fixed-0.5 / CAP pseudo-labels
  cdcr       partial multi-label: naive BCE on candidates vs CDCR curriculum weights
  ccmn       class-conditional multi-label noise: BCE vs unbiased corrected BCE
  mogd       partial-label digits: uniform / self-training / MoGD candidate weights
  lewis      one-shot multi-model AL: Lewis-weight vs uniform sampling (least-squares heads)
  flain      FedAvg with backdoor clients: attack success before/after the FLAIN defence
  fairfal    federated AL on long-tailed non-IID digits: random / entropy / FairFAL
  rdd        per-sample relative-difficulty distillation vs CE and KD students
  rdd-seg    per-pixel RDD vs CE and KD students on synthetic shapes (segmentation: mIoU, pixel accuracy)
  optimum-shift  min-norm last layer: loss unchanged, ‖W‖ and input-Hessian trace before/after
  all        every experiment above
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

from llmkit.errors import exit_on_user_error
from llmkit.vision import VisionError
from llmkit.vision.experiments import EXPERIMENTS, RUNNERS
from llmkit.vision.experiments._common import markdown_table, mean_std, paired_delta  # noqa: F401 (re-exported)

__all__ = [
    "EXPERIMENTS",
    "RUNNERS",
    "main",
    "markdown_table",
    "output_folder",
    "mean_std",
    "paired_delta",
    "parse_args",
]


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m llmkit.vision.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiment", help=f"one of {', '.join(EXPERIMENTS)}, or 'all'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/vision/<experiment>)")
    parser.add_argument(
        "--no-readme",
        action="store_true",
        help="accepted for old commands; the library never writes the README (benchmarks/vision_tables.py does)",
    )
    parser.add_argument("--tag", default="", help="name a variant run: README block and default folder get '-<tag>'")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--noise", default="symmetric", help="dpc: symmetric | asymmetric | pair")
    parser.add_argument("--rate", type=float, default=0.4, help="dpc: noise rate")
    parser.add_argument("--epochs", type=int, default=None, help="dpc: training epochs (default 60)")
    parser.add_argument("--known", type=int, default=6, help="openset-al: classes 0..known-1 are known")
    parser.add_argument("--initial-per-class", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--false-rate", type=float, default=0.2, help="cdcr: chance a negative becomes a candidate")
    parser.add_argument("--rho-pos", type=float, default=0.3, help="ccmn: P(observed 0 | true 1)")
    parser.add_argument("--rho-neg", type=float, default=0.1, help="ccmn: P(observed 1 | true 0)")
    parser.add_argument("--candidate-rate", type=float, default=0.5, help="mogd: chance a wrong class is a candidate")
    parser.add_argument("--clean-val", type=int, default=50, help="mogd: clean validation examples")
    parser.add_argument("--lewis-budget", type=int, default=150, help="lewis: labels queried at once")
    parser.add_argument("--beta", type=float, default=0.5, help="flain: Dirichlet β of the client split")
    parser.add_argument("--fl-rounds", type=int, default=30, help="flain: FedAvg rounds")
    parser.add_argument("--flain-tolerance", type=float, default=0.05, help="flain: allowed aux-accuracy drop")
    parser.add_argument("--imbalance", type=float, default=0.1, help="fairfal: tail/head class-size ratio")
    parser.add_argument("--fl-beta", type=float, default=0.1, help="fairfal: Dirichlet β of the client split")
    parser.add_argument("--rdd-examples", type=int, default=300, help="rdd: labelled training examples")
    parser.add_argument("--seg-images", type=int, default=512, help="rdd-seg: training images per seed")
    parser.add_argument("--seg-steps", type=int, default=1000, help="rdd-seg: student training steps (batch 32)")
    parser.add_argument(
        "--labels",
        type=int,
        default=100,
        help="dhkd: labelled examples for the student's CE; optimum-shift: training examples",
    )
    return parser.parse_args(argv)


def output_folder(args: argparse.Namespace, experiment: str) -> tuple[str, Path]:
    """(README block name, output folder) of one experiment of a parsed command."""
    name = f"{experiment}-{args.tag}" if args.tag else experiment
    if args.out is None:
        return name, Path("outputs/vision") / name
    # with 'all', --out is the parent folder of one folder per experiment
    return name, args.out / experiment if args.experiment == "all" else args.out


@exit_on_user_error
def main(argv=None) -> dict:
    """Run the requested experiment(s); returns {experiment: raw results}."""
    args = parse_args(argv)
    if args.experiment != "all" and args.experiment not in EXPERIMENTS:
        raise VisionError(f"unknown experiment {args.experiment!r}; choose one of {', '.join(EXPERIMENTS)}, all")
    if len(args.seeds) < 1:
        raise VisionError("give at least one seed")
    import torch

    torch.set_num_threads(args.threads)
    command = "python -m llmkit.vision.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    machine = f"CPU {platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}"
    outputs = {}
    for experiment in EXPERIMENTS if args.experiment == "all" else (args.experiment,):
        name, out = output_folder(args, experiment)
        out.mkdir(parents=True, exist_ok=True)
        print(f"== {name} (seeds {args.seeds}) → {out}", flush=True)
        started = time.time()
        text, results = RUNNERS[experiment](args.seeds, out, args)
        seconds = time.time() - started
        block = (
            f"{text}\n\nMean ± std over seeds {', '.join(map(str, args.seeds))}. "
            f"Date {dt.date.today().isoformat()}; machine: {machine}; wall time {seconds:.0f} s. "
            f"Command: `{command}`"
        )
        print(f"\n{block}\n", flush=True)
        (out / "results.json").write_text(
            json.dumps(
                {
                    "experiment": experiment,
                    "name": name,
                    "seeds": args.seeds,
                    "command": command,
                    "machine": machine,
                    "results": results,
                },
                default=float,
            )
        )
        (out / "table.md").write_text(block + "\n")
        outputs[experiment] = results
    return outputs


if __name__ == "__main__":
    main()
