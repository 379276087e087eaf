"""CPU timing of the padding-free attention paths: per-example SDPA (llmkit's CPU path) vs flex attention.

One packed row of examples with CodeAlpaca-like lengths, attention op alone at two head shapes (the tiny
random Llama: 2 heads / 1 KV head × 32; SmolLM2-135M: 9 heads / 3 KV heads × 64), and the whole tiny model.
Flex attention has no CPU backward in torch 2.13, so it is timed forward only; per-example SDPA is timed
forward and forward + backward. Prints a markdown table.

    OMP_NUM_THREADS=1 python benchmarks/padding_free_attention.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from llmkit.train.packed_attention import (
    document_block_mask,
    per_example_causal_attention,
    segment_lengths,
)


def packed_positions(n_examples: int, seed: int) -> torch.Tensor:
    """Position ids of one packed row; lengths uniform in [32, 512] (CodeAlpaca-like at max_length 512)."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(32, 513, (n_examples,), generator=gen).tolist()
    return torch.cat([torch.arange(n) for n in lengths])[None]


def timed(fn, repeats: int) -> float:
    """Median wall milliseconds of `fn()` over `repeats` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def attention_rows(heads: int, kv_heads: int, head_dim: int, pos: torch.Tensor, repeats: int) -> dict[str, float]:
    """ms for each path on one packed row at this head shape."""
    from torch.nn.attention.flex_attention import flex_attention

    n = pos.shape[1]
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, heads, n, head_dim, generator=gen)
    k, v = (torch.randn(1, kv_heads, n, head_dim, generator=gen) for _ in range(2))
    lengths = segment_lengths(pos)
    block_mask = document_block_mask(pos[0])
    compiled = torch.compile(flex_attention)
    gqa = kv_heads != heads

    def per_example_fwd_bwd():
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        per_example_causal_attention(qq, kk, vv, lengths).sum().backward()

    with torch.no_grad():
        rows = {
            "per-example SDPA fwd": timed(lambda: per_example_causal_attention(q, k, v, lengths), repeats),
            "flex (compiled) fwd": timed(lambda: compiled(q, k, v, block_mask=block_mask, enable_gqa=gqa), repeats),
            "flex (eager) fwd": timed(
                lambda: flex_attention(q, k, v, block_mask=block_mask, enable_gqa=gqa), max(1, repeats // 3)
            ),
        }
    rows["per-example SDPA fwd+bwd"] = timed(per_example_fwd_bwd, repeats)
    rows["flex fwd+bwd"] = float("nan")  # NotImplementedError on CPU (torch 2.13)
    return rows


def tiny_model_rows(pos: torch.Tensor, repeats: int) -> dict[str, float]:
    """ms of one packed forward of the tiny random Llama with each attention path."""
    from llmkit.models import ModelConfig, load_model
    from llmkit.train.packed_attention import (
        FLEX_ATTENTION,
        PER_EXAMPLE_SDPA,
        use_padding_free_attention,
    )

    ids = torch.randint(0, 49152, pos.shape, generator=torch.Generator().manual_seed(0))
    rows = {}
    for label, path in (("per-example SDPA", PER_EXAMPLE_SDPA), ("flex", FLEX_ATTENTION)):
        model = load_model(ModelConfig(name="tiny-random-llama", attn_implementation="sdpa"), vocab_size=49152).eval()
        use_padding_free_attention(model, path)
        with torch.no_grad():
            rows[f"tiny model {label} fwd"] = timed(
                lambda m=model: m(input_ids=ids, position_ids=pos, use_cache=False), repeats
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    pos = packed_positions(args.examples, args.seed)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, row {pos.shape[1]} tokens / "
        f"{args.examples} examples"
    )
    shapes = {"tiny (2 h / 1 kv × 32)": (2, 1, 32), "SmolLM2-135M (9 h / 3 kv × 64)": (9, 3, 64)}
    print("| shape | path | ms |\n|---|---|---|")
    for name, shape in shapes.items():
        for path, ms in attention_rows(*shape, pos, args.repeats).items():
            print(
                f"| {name}, attention op | {path} | {ms:.1f} |"
                if not math.isnan(ms)
                else f"| {name}, attention op | {path} | no CPU backward |"
            )
    for path, ms in tiny_model_rows(pos, args.repeats).items():
        print(f"| tiny random Llama (2 layers), whole model | {path} | {ms:.1f} |")


if __name__ == "__main__":
    main()
