"""Write the vision experiments' tables into llmkit/vision/README.md.

`python -m llmkit.vision.run <experiment>` writes each experiment's README block (title, table, seeds,
date, machine, command) to <out>/table.md and never edits the README. This script does that part:

  python benchmarks/vision_tables.py <experiment> [run options]   run it, then copy the block(s) in
  python benchmarks/vision_tables.py --collect [folder]           copy every table.md under folder
                                                                   (default outputs/vision) in

Each block replaces the README's `<!-- results:<name> -->` … `<!-- /results:<name> -->` section, or is
appended at the end if the README has none (<name> is the experiment, with '-<tag>' for tagged runs).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "llmkit" / "vision" / "README.md"


def update_readme(experiment: str, block: str, readme: Path | None = None) -> None:
    """Replace (or append) the `<!-- results:<experiment> -->` block of the README."""
    readme = README if readme is None else readme
    start, end = f"<!-- results:{experiment} -->", f"<!-- /results:{experiment} -->"
    text = readme.read_text() if readme.exists() else "# llmkit.vision\n"
    new = f"{start}\n{block}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: new, text) if pattern.search(text) else text.rstrip() + f"\n\n{new}\n"
    readme.write_text(text)


def copy_block(folder: Path, readme: Path | None = None) -> str:
    """Copy one experiment folder's table.md into the README; returns the block name."""
    name = json.loads((folder / "results.json").read_text()).get("name", folder.name)
    update_readme(name, (folder / "table.md").read_text().rstrip("\n"), readme)
    return name


def collect(root: Path, readme: Path | None = None) -> list[str]:
    """Copy every table.md under root (one folder per experiment) into the README."""
    return [
        copy_block(table.parent, readme)
        for table in sorted(root.rglob("table.md"))
        if (table.parent / "results.json").exists()
    ]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--collect"]:
        names = collect(Path(argv[1]) if len(argv) > 1 else Path("outputs/vision"))
        print(f"README blocks written: {', '.join(names) or 'none (no table.md found)'}")
        return
    from llmkit.vision import run

    argv = [a for a in argv if a != "--no-readme"]
    run.main(argv)
    args = run.parse_args(argv)
    for experiment in run.EXPERIMENTS if args.experiment == "all" else (args.experiment,):
        print(f"README block written: {copy_block(run.output_folder(args, experiment)[1])}")


if __name__ == "__main__":
    main()
