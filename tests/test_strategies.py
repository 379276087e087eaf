"""H-GIVR control flow and self-consistency voting, against scripted answerers."""

from __future__ import annotations

from llmkit.evaluation.strategies import confirmed, run_hgivr, self_consistency, vote


def scripted(sequences):
    """An answerer that gives question q its scripted answers in order, and records what it was shown."""
    seen = []

    def answer(questions, descriptions, histories):
        seen.append((list(questions), [list(d) for d in descriptions], [list(h) for h in histories]))
        return [sequences[q][len(h)] for q, h in zip(questions, histories)]

    return answer, seen


def describer(log):
    def describe(questions, round_index):
        log.append((round_index, list(questions)))
        return [f"desc {q} r{round_index}" for q in questions]

    return describe


def test_stops_on_any_repeat_and_reobserves_on_even_rounds():
    answer, seen = scripted({0: ["A", "B", "A", "C"], 1: ["B", "B"], 2: [None, None, "C", "C"]})
    desc_log = []
    traces = run_hgivr([0, 1, 2], describer(desc_log), answer)
    assert [t.final for t in traces] == ["A", "B", "C"]
    assert [t.answer_calls for t in traces] == [3, 2, 4]
    assert [t.stopped_by for t in traces] == ["repeat"] * 3
    # describe: round 1 for all, round 2 for all (still active), round 4 only for question 2
    assert desc_log == [(1, [0, 1, 2]), (2, [0, 1, 2]), (4, [2])]
    assert [t.description_calls for t in traces] == [2, 2, 3]
    assert traces[2].descriptions == ["desc 2 r1", "desc 2 r2", "desc 2 r4"]
    # the history passed at round 3 holds the earlier answers as references
    assert seen[2] == ([0, 2], [["desc 0 r1", "desc 0 r2"], ["desc 2 r1", "desc 2 r2"]], [["A", "B"], [None, None]])


def test_consecutive_flag_and_the_cap_of_ten():
    answer, _ = scripted({0: ["A", "B", "A", "A"]})
    assert run_hgivr([0], describer([]), answer, consecutive=True)[0].answer_calls == 4
    answer, _ = scripted({0: ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K"]})
    trace = run_hgivr([0], describer([]), answer)[0]
    assert trace.answer_calls == 10 and trace.stopped_by == "cap" and trace.final == "J"  # all tied: latest wins
    answer, _ = scripted({0: [None] * 10})
    trace = run_hgivr([0], describer([]), answer, describe_is_call=False)[0]
    assert trace.final is None and trace.description_calls == 0 and trace.answer_calls == 10


def test_rules_and_voting():
    assert confirmed(["A", "B", "A"], consecutive=False) and not confirmed(["A", "B", "A"], consecutive=True)
    assert not confirmed([None, None], consecutive=True)
    assert vote(["A", "B", "B", None, None]) == "B" and vote(["A", "B"]) == "B" and vote([None]) is None
    assert self_consistency([["A", "A", "B"], ["C", None, "D"]]) == ["A", "D"]


class FakeGenerator:
    """Answers ScienceQA prompts from a script: the first call per question says (A), later calls (B)."""

    backend_name = "fake"

    def __init__(self):
        self.calls = 0
        self.seeds = []

    def generate(self, prompts, params):
        from llmkit.generation.types import Completion, GenerationOutput

        self.seeds.append(params.seed)
        outs = []
        for p in prompts:
            self.calls += 1
            text = p[0]["content"]
            letter = "B" if "Previous answers" in text else "A"
            outs.append(GenerationOutput(text, [Completion(f"The answer is ({letter}).", [], "stop")] * params.n))
        return outs

    def describe(self):
        return {"backend": "fake"}


def test_hgivr_on_scienceqa_through_the_harness(tmp_path):
    import json

    from llmkit.evaluation.harness import EvalConfig, run_eval
    from llmkit.evaluation.tasks import get_task

    task = get_task("scienceqa-text")
    gen = FakeGenerator()
    cfg = EvalConfig(task="scienceqa-text", strategy="hgivr", limit=20, output_dir=str(tmp_path / "h"))
    results = run_eval(task, gen, cfg)
    # round 1 answers A, round 2 answers B (history present), round 3 B again: confirmed at 3 calls
    assert results["metrics"]["responses_per_question"] == 3.0 and gen.calls == 60
    # each round samples with its own seed (the run's seed for the first), so sampled rounds are independent
    from llmkit.evaluation.tasks.scienceqa import ROUND_SEED_STRIDE

    assert gen.seeds == [cfg.seed, cfg.seed + ROUND_SEED_STRIDE, cfg.seed + 2 * ROUND_SEED_STRIDE]
    problems = task.load(20)
    expected = 100.0 * sum(p["answer"] == 1 for p in problems) / 20
    assert results["metrics"]["accuracy"] == expected
    assert results["strategy"]["name"] == "hgivr" and results["strategy"]["max_rounds"] == 10
    samples = [json.loads(line) for line in (tmp_path / "h" / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["prompt"] == "[3 model calls]"
    sc = run_eval(
        task,
        FakeGenerator(),
        EvalConfig(
            task="scienceqa-text", strategy="self_consistency", sc_samples=3, limit=20, output_dir=str(tmp_path / "sc")
        ),
    )
    assert sc["metrics"]["responses_per_question"] == 3.0
    assert sc["metrics"]["accuracy"] == 100.0 * sum(p["answer"] == 0 for p in problems) / 20


def test_strategy_metrics_from_per_question_records():
    from llmkit.evaluation.strategies import strategy_metrics

    records = [
        {"calls": 2, "stopped_by": "repeat"},
        {"calls": 10, "stopped_by": "cap"},
        {"calls": 3, "stopped_by": "repeat"},
    ]
    assert strategy_metrics(records) == {"responses_per_question": 5.0, "stopped_at_cap": 1.0}
    assert strategy_metrics([{"calls": 5}, {"calls": 5}]) == {"responses_per_question": 5.0}  # self-consistency
    assert strategy_metrics([]) == {}


class InterruptingGenerator(FakeGenerator):
    """FakeGenerator that dies (KeyboardInterrupt) on its `fail_on`-th generate call."""

    def __init__(self, fail_on):
        super().__init__()
        self.generate_calls, self.fail_on = 0, fail_on

    def generate(self, prompts, params):
        self.generate_calls += 1
        if self.generate_calls == self.fail_on:
            raise KeyboardInterrupt
        return super().generate(prompts, params)


def test_interrupted_hgivr_run_resumes_to_the_same_results(tmp_path):
    """Chunks are journaled; a resumed run generates only the missing problems and scores like an uninterrupted one."""
    import json

    import pytest

    from llmkit.errors import ConfigError
    from llmkit.evaluation.harness import EvalConfig, run_eval
    from llmkit.evaluation.tasks import get_task

    task = get_task("scienceqa-text")
    reference = run_eval(
        task,
        FakeGenerator(),
        EvalConfig(task="scienceqa-text", strategy="hgivr", limit=20, chunk_size=0, output_dir=str(tmp_path / "ref")),
    )
    cfg = EvalConfig(task="scienceqa-text", strategy="hgivr", limit=20, chunk_size=8, output_dir=str(tmp_path / "run"))
    # chunk 1 (8 problems) takes 3 generate calls (rounds), chunk 2 dies in its second round
    with pytest.raises(KeyboardInterrupt):
        run_eval(task, InterruptingGenerator(fail_on=5), cfg)
    partial = tmp_path / "run" / "partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 8  # header + the first chunk
    # without --resume the partial run is not overwritten
    with pytest.raises(ConfigError, match="8 outputs of an interrupted run"):
        run_eval(task, FakeGenerator(), cfg)
    # other generation settings: refused, naming the setting
    with pytest.raises(ConfigError, match="hgivr_max_rounds: 10 there, 4 now"):
        run_eval(task, FakeGenerator(), EvalConfig(**{**cfg.__dict__, "resume": True, "hgivr_max_rounds": 4}))
    # a torn last line (killed mid-write) is dropped, and the file is cleaned so that the next chunks append
    # on a line of their own: interrupted again in its last chunk, the journal still reads back
    with partial.open("a") as fh:
        fh.write('{"id": "half')
    with pytest.raises(KeyboardInterrupt):
        run_eval(task, InterruptingGenerator(fail_on=4), EvalConfig(**{**cfg.__dict__, "resume": True}))
    lines = partial.read_text().splitlines()
    assert len(lines) == 1 + 16 and all(json.loads(line) for line in lines)
    resumed_gen = FakeGenerator()
    resumed = run_eval(task, resumed_gen, EvalConfig(**{**cfg.__dict__, "resume": True}))
    assert resumed["resumed_problems"] == 16 and resumed_gen.calls == 4 * 3  # only the 4 missing problems, 3 rounds
    assert resumed["metrics"] == reference["metrics"]
    assert not partial.exists()  # the results are complete: samples.jsonl holds everything
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == [p["id"] for p in task.load(20)]
    assert samples[0]["metadata"]["strategy"] == {"calls": 3, "stopped_by": "repeat"}


def test_resume_refuses_a_partial_file_of_other_problems(tmp_path):
    import pytest

    from llmkit.errors import ConfigError
    from llmkit.evaluation.harness import EvalConfig, run_eval
    from llmkit.evaluation.tasks import get_task

    out = tmp_path / "run"
    out.mkdir()
    from llmkit.evaluation.harness import GENERATION_FIELDS

    settings = {k: getattr(EvalConfig(task="scienceqa-text", limit=5), k) for k in GENERATION_FIELDS}
    (out / "partial.jsonl").write_text(
        __import__("json").dumps({"settings": settings})
        + "\n"
        + '{"id": "not-a-problem", "output": {"prompt_text": "", "completions": []}}\n'
    )
    with pytest.raises(ConfigError, match="not in this task's problems"):
        run_eval(
            get_task("scienceqa-text"),
            FakeGenerator(),
            EvalConfig(task="scienceqa-text", limit=5, resume=True, output_dir=str(out)),
        )
    (out / "partial.jsonl").write_text("garbage\n")
    with pytest.raises(ConfigError, match="no settings header"):
        run_eval(
            get_task("scienceqa-text"),
            FakeGenerator(),
            EvalConfig(task="scienceqa-text", limit=5, resume=True, output_dir=str(out)),
        )


def test_chunks_get_distinct_seeds_and_a_missing_strategy_record_is_an_error(tmp_path, monkeypatch):
    import pytest

    from llmkit.evaluation.harness import EvalConfig, clear_partial, run_eval
    from llmkit.evaluation.tasks import get_task

    gen = FakeGenerator()  # records each call's seed
    run_eval(
        get_task("scienceqa-text"),
        gen,
        EvalConfig(task="scienceqa-text", limit=10, chunk_size=4, seed=7, output_dir=str(tmp_path / "a")),
    )
    assert gen.seeds == [7, 11, 15]  # seed + the chunk's first problem position

    class NoRecord(FakeGenerator):
        pass

    task = get_task("scienceqa-text")
    monkeypatch.setattr(
        type(task),
        "run_strategy",
        lambda self, strategy, problems, generator, params, cfg: generator.generate(
            [self.prompt(p, True) for p in problems], params
        ),
    )
    with pytest.raises(RuntimeError, match="without their per-question record"):
        run_eval(
            task,
            NoRecord(),
            EvalConfig(task="scienceqa-text", strategy="hgivr", limit=3, output_dir=str(tmp_path / "b")),
        )
    assert clear_partial(tmp_path / "b") is True and clear_partial(tmp_path / "b") is False


def test_resume_refuses_a_journal_of_other_weights_at_the_same_path(tmp_path):
    """A local model retrained in place between an interrupted run and its resume is noticed (model_files)."""

    import pytest

    from llmkit.errors import ConfigError
    from llmkit.evaluation.harness import EvalConfig, generation_settings, model_fingerprint, run_eval
    from llmkit.evaluation.tasks import get_task

    model = tmp_path / "sft"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (model / "eval").mkdir()  # an evaluation folder inside the model folder does not count
    before = model_fingerprint(str(model))
    (model / "eval" / "partial.jsonl").write_text("x\n")
    (model / "metrics.jsonl").write_text("{}\n")
    assert model_fingerprint(str(model)) == before and model_fingerprint("smollm2-135m-instruct") is None
    assert "model_files" not in generation_settings(EvalConfig(model="smollm2-135m-instruct"))
    assert generation_settings(EvalConfig(backend="openai", base_url="http://h:1/v1"))["base_url"] == "http://h:1/v1"

    task = get_task("scienceqa-text")
    cfg = EvalConfig(
        task="scienceqa-text",
        model=str(model),
        strategy="hgivr",
        limit=20,
        chunk_size=8,
        output_dir=str(model / "eval"),
    )
    (model / "eval" / "partial.jsonl").unlink()
    with pytest.raises(KeyboardInterrupt):
        run_eval(task, InterruptingGenerator(fail_on=5), cfg)
    (model / "adapter_model.safetensors").write_bytes(b"\1" * 96)  # retrained: other weights, same path
    with pytest.raises(ConfigError, match="model_files"):
        run_eval(task, FakeGenerator(), EvalConfig(**{**cfg.__dict__, "resume": True}))


def test_eval_config_rejects_counts_below_one():
    import pytest

    from llmkit.evaluation.harness import EvalConfig

    for name in ("sc_samples", "hgivr_max_rounds", "n", "batch_size", "max_new_tokens"):
        with pytest.raises(ValueError, match=f"{name} must be >= 1"):
            EvalConfig(**{name: 0, **({"k": []} if name == "n" else {})})


def test_eval_summary_row_says_when_a_run_was_resumed():
    """benchmarks/eval_summary.py: a resumed run's wall time is its last process's, and the row says so."""
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("eval_summary", REPO_ROOT / "benchmarks" / "eval_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = {
        "task": "scienceqa",
        "model": "m",
        "generator": {"backend": "vllm"},
        "num_problems": 4241,
        "metrics": {"accuracy": 41.25, "responses_per_question": 5.0},
        "wall_seconds": 812.5,
        "command": "llmkit eval --task scienceqa",
        "resumed_problems": 0,
    }
    row = module.row(results)
    assert "| accuracy = 41.25 |" in row and "| 812.5 |" in row
    resumed = module.row({**results, "resumed_problems": 3000})
    assert "| 812.5 (resumed: 3000 problems from earlier runs) |" in resumed
