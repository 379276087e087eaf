"""Padding rate of the three collators on a real dataset, without training (CodeACT's Dynamic Pack check).

    python benchmarks/packing_padding.py                      # CodeAlpaca-2k, SmolLM2 tokenizer, batch 16, 2048
    python benchmarks/packing_padding.py --template plain --batch 16 --max_length 2048
    python benchmarks/packing_padding.py --tokenizer deepseek-coder-vocab --template plain --with_mbpp

`deepseek-coder-vocab` is the vocab-only `ggml-vocab-deepseek-coder.gguf` from the llama-cpp-python sdist
on PyPI (fetched once with `pip download`, cached under LLMKIT_CACHE; no model hub needed); transformers
reads the GGUF vocabulary (45 of llama.cpp's 46 tokenizer test vectors match exactly).

One epoch in the trainer's seeded random order, cut into micro-batches of `--batch`; each is collated
with `none` (one example per row, right-padded), `dynamic` (the paper's Dynamic Pack) and
`padding_free`. Padding rate = pad positions ÷ all positions of the batch tensors. The loss-token count
must be identical in all three (it is asserted). Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
DEEPSEEK_VOCAB = "ggml-vocab-deepseek-coder.gguf"
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"


def deepseek_coder_tokenizer():
    """DeepSeek-Coder's tokenizer from the vocab-only GGUF in the llama-cpp-python sdist (cached)."""
    import subprocess
    import tarfile
    import tempfile

    from transformers import AutoTokenizer

    from llmkit.models import cache_dir

    folder = cache_dir() / "vocab"
    if not (folder / DEEPSEEK_VOCAB).exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    LLAMA_CPP_SDIST,
                    "--no-deps",
                    "--no-binary",
                    ":all:",
                    "-d",
                    tmp,
                    "-q",
                ],
                check=True,
            )
            sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
            with tarfile.open(sdist) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("models/" + DEEPSEEK_VOCAB))
                data = tar.extractfile(member).read()
        partial = folder / (DEEPSEEK_VOCAB + ".part")
        partial.write_bytes(data)
        partial.replace(folder / DEEPSEEK_VOCAB)  # atomic: a torn download is never taken for the file
    return AutoTokenizer.from_pretrained(str(folder), gguf_file=DEEPSEEK_VOCAB)


def main() -> None:
    """Collate one epoch three ways; print and append the table."""
    from llmkit.data import DataConfig, load_sft_data
    from llmkit.data.packing import PackingStats, collate_examples
    from llmkit.models import ModelConfig, load_tokenizer
    from llmkit.train.batching import epoch_permutation
    from llmkit.train.losses import count_target_tokens

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="codealpaca/code_alpaca_2k.json")
    parser.add_argument("--tokenizer", default="smollm2-135m-instruct", help="a model name, or deepseek-coder-vocab")
    parser.add_argument(
        "--with_mbpp", action="store_true", help="add MBPP (text → code, all 974 rows) to the pool, as the paper's mix"
    )
    parser.add_argument("--template", default="chat", choices=["chat", "plain"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max_length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_append", action="store_true")
    args = parser.parse_args()

    tokenizer = (
        deepseek_coder_tokenizer()
        if args.tokenizer == "deepseek-coder-vocab"
        else load_tokenizer(ModelConfig(name=args.tokenizer))
    )
    sources = [(args.data, {"prompt": ["instruction", "input"], "response": "output"})]
    if args.with_mbpp:
        sources.append(("mbpp/mbpp.jsonl", {"prompt": "text", "response": "code"}))
    data = []
    for path, columns in sources:
        data += load_sft_data(
            DataConfig(
                path=path,
                columns=columns,
                template=args.template,
                # the paper's DeepSeek-Coder template for the plain variant
                plain_prompt_format="### Instruction:\n{prompt}\n### Response:\n",
                max_length=args.max_length,
            ),
            tokenizer,
        ).train
    order = epoch_permutation(len(data), args.seed, 0)
    batches = [[data[i] for i in order[s : s + args.batch]] for s in range(0, len(order) - args.batch + 1, args.batch)]
    stats, targets = {}, {}
    for mode in ("none", "dynamic", "padding_free"):
        stats[mode], targets[mode] = PackingStats(), 0
        for batch in batches:
            collated = collate_examples(batch, tokenizer.pad_token_id, mode, args.max_length)
            stats[mode].add(collated)
            targets[mode] += count_target_tokens(collated["labels"])
    if len(set(targets.values())) != 1:
        sys.exit(f"loss tokens differ between collators: {targets}")
    lengths = sorted(len(ex.input_ids) for ex in data)
    lines = [
        "| collator | rows | examples/row | real tokens | tensor positions | padding rate | loss tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, st in stats.items():
        lines.append(
            f"| {mode} | {st.rows} | {st.examples_per_row:.2f} | {st.real_tokens} | {st.slots} | "
            f"{st.padding_rate:.1%} | {targets[mode]} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        section = (
            f"\n## Padding rate of the collators: {args.data}{' + MBPP' if args.with_mbpp else ''}, "
            f"{args.tokenizer} tokenizer ({args.template} template), "
            f"batch {args.batch}, max_length {args.max_length}\n\n"
            f"- date: {dt.date.today().isoformat()}\n- machine: {platform.machine()} (no training; tokenisation "
            f"and collation only)\n"
            f"- command: `python {' '.join(sys.argv)}`\n"
            f"- {len(data)} examples, {len(batches)} micro-batches; example length median "
            f"{lengths[len(lengths) // 2]}, "
            f"max {lengths[-1]} tokens\n\n{table}\n"
        )
        with RESULTS.open("a") as fh:
            fh.write(section)


if __name__ == "__main__":
    main()
