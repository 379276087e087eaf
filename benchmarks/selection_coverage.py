"""Selection methods side by side on one pool: subset size, coverage, IFD, time.

    python benchmarks/selection_coverage.py                       # CodeAlpaca-2k, all five methods, IFD by SmolLM2
    python benchmarks/selection_coverage.py --pool mixed20k --methods distribution,kcenter,random --budget 1000

`codealpaca`: the methods at the same subset size (CDAS's, so m = 0.4 of each filtered cluster sets it).
`mixed20k`: about 20K instructions (GSM8K train questions, CodeAlpaca, ScienceQA questions, SST-2 sentences)
written to a temporary file, for the paper's CPU check of distribution-consistent selection (20K pool,
m = 1K): loss decreases, no duplicates, coverage vs random and k-center, run time. IFD scores and
embeddings are cached in --cache_dir. Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def mixed_pool(path: Path) -> int:
    """Write ~20K instruction rows from four local datasets to `path` (jsonl: instruction, output)."""
    from llmkit.data.loading import read_records

    rows = []
    for name, q, a in (
        ("gsm8k/train.jsonl", "question", "answer"),
        ("codealpaca/code_alpaca_2k.json", "instruction", "output"),
        ("scienceqa/test.jsonl", "question", "solution"),
        ("sst2/train.jsonl", "text", "label_text"),
    ):
        for r in read_records(name):
            rows.append({"instruction": str(r.get(q) or ""), "output": str(r.get(a) or "-")})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def main() -> None:
    """Run each method through `run_selection`; print and append the table."""
    from llmkit.data.selection.run import SelectConfig, run_selection

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", default="codealpaca", choices=["codealpaca", "mixed20k"])
    parser.add_argument("--methods", default="cdas,distribution,kcenter,ifd,random")
    parser.add_argument("--budget", type=float, default=0, help="subset size (count); 0 = the size CDAS selects")
    parser.add_argument("--ifd_max_length", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--cache_dir", default="outputs/code_selection-cache")
    parser.add_argument("--output_dir", default="outputs/selection-benchmark")
    parser.add_argument("--no_append", action="store_true")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    if args.pool == "mixed20k":
        data_path = str(Path(tmp.name) / "mixed20k.jsonl")
        mixed_pool(Path(data_path))
        columns = {"instruction_column": ["instruction"], "response_column": "output"}
    else:
        data_path = "codealpaca/code_alpaca_2k.json"
        columns = {}
    methods = args.methods.split(",")
    budget = args.budget
    results = []
    for method in methods:
        cfg = SelectConfig(
            method=method,
            data_path=data_path,
            budget=budget or 0.4,
            output_dir=f"{args.output_dir}/{args.pool}-{method}",
            cache_dir=args.cache_dir,
            ifd_max_length=args.ifd_max_length,
            iterations=args.iterations,
            **columns,
        )
        summary = run_selection(cfg)
        if method == "cdas" and not budget:
            budget = float(summary["selected"])  # the other methods select as many as CDAS did
        results.append(summary)
    lines = [
        "| method | pool | selected | nearest-selected cosine ↑ | cluster KL ↓ | subset mean IFD | select s | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results:
        ifd = f"{s['ifd']['selected_mean']:.3f}" if s["ifd"] else "-"
        note = ""
        if "centroid_loss" in s:
            note = f"J {s['centroid_loss']['first']:.3f} → {s['centroid_loss']['last']:.3f}"
        if s["ifd"]:
            note += f"pool mean IFD {s['ifd']['pool_mean']:.3f}, {s['ifd']['pool_at_least_max']} with IFD ≥ 1"
        lines.append(
            f"| {s['method']} | {s['pool']} | {s['selected']} | {s['coverage']['mean_nearest_selected_cosine']:.4f} | "
            f"{s['coverage']['cluster_kl']:.4f} | {ifd} | {s['timings_s']['select_s']:.1f} | {note} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        section = (
            f"\n## Data selection on {args.pool}: coverage at equal subset size\n\n- date: "
            f"{dt.date.today().isoformat()}\n"
            f"- machine: CPU {platform.machine()} (2 cores)\n- command: `python {' '.join(sys.argv)}`\n"
            f"- embeddings: all-MiniLM-L6-v2; clusters: K-means k = 10, seed 42 (the same clusters for every row); "
            f"coverage = mean over the pool of the cosine to the closest selected sample; KL(pool ‖ subset) of "
            f"the cluster histograms\n\n{table}\n"
        )
        with RESULTS.open("a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
