"""AL bookkeeping (IndexCollection, Oracle, State/StateIO, StoppingCriteria) and the resumable ActiveLoop."""

import json

import numpy as np
import pytest

from llmkit.vision import VisionError
from llmkit.vision.al import UNKNOWN, IndexCollection, Oracle, State, StateIO, StoppingCriteria, query_precision
from llmkit.vision.data import as_tensors, initial_labelled, load_digits_split, open_set_split
from llmkit.vision.loops.active import ActiveConfig, ActiveLoop
from llmkit.vision.strategies import make_strategy


def test_index_collection_is_an_ordered_set_with_strict_errors():
    c = IndexCollection([5, 2, 9])
    c.add(1)
    c.difference_update([2])
    assert c.index.tolist() == [5, 9, 1] and 9 in c and 2 not in c and len(c) == 3
    with pytest.raises(VisionError, match="already"):
        c.add(5)
    with pytest.raises(VisionError, match="not in"):
        c.discard(42)
    with pytest.raises(VisionError, match="integers"):
        IndexCollection([1.5])
    sample = c.random_sampling(2, np.random.default_rng(0))
    assert len(set(sample)) == 2 and set(sample) <= {5, 9, 1}
    with pytest.raises(VisionError, match="cannot sample"):
        c.random_sampling(4, np.random.default_rng(0))


def test_open_set_oracle_answers_unknown_and_charges_for_it():
    oracle = Oracle([3, 7, 4, 3], cost=[1, 2, 3, 4], known_classes=[3, 4])
    labels, costs = oracle.query_by_index([0, 1, 2])
    assert labels.tolist() == [0, UNKNOWN, 1] and costs.tolist() == [1, 2, 3]
    assert query_precision(labels) == pytest.approx(2 / 3)
    with pytest.raises(VisionError, match="outside"):
        oracle.query_by_index([4])
    with pytest.raises(VisionError, match="empty"):
        query_precision([])
    assert Oracle([3, 7]).query_by_index([1])[0].tolist() == [7]  # closed-set: labels as given


def test_stateio_round_trip_and_workspace(tmp_path):
    path = tmp_path / "state.json"
    io = StateIO(0, range(6), [], init_L=[0], init_U=[1, 2, 3, 4, 5], initial_point=50.0, saving_path=path)
    io.add_state(State([2, 3], 60.0, queried_label=[1, UNKNOWN], cost=[1, 1], strategy_state={"k1": 6}))
    io.add_state(State([5], 70.0, queried_label=[0]))
    loaded = StateIO.load(path)
    assert loaded.to_dict() == io.to_dict()
    assert loaded.num_of_query == 2 and loaded.cost_inall == 3.0 and loaded.get_current_performance() == 70.0
    ws = loaded.recover_workspace(1)
    assert ws.labelled.index.tolist() == [0, 2] and ws.unknown.index.tolist() == [3]
    assert ws.unlabelled.index.tolist() == [1, 4, 5] and ws.strategy_state == {"k1": 6}
    assert loaded.recover_workspace().unlabelled.index.tolist() == [1, 4]
    with pytest.raises(VisionError, match="not in the unlabelled pool"):
        loaded.add_state(State([2], 0.0))  # already queried
    with pytest.raises(VisionError, match="iteration"):
        loaded.recover_workspace(3)


def test_stateio_errors(tmp_path):
    with pytest.raises(VisionError, match="overlap"):
        StateIO(0, [], [], init_L=[1], init_U=[1, 2])
    with pytest.raises(VisionError, match="no saved AL state"):
        StateIO.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VisionError, match="not a valid StateIO"):
        StateIO.load(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(VisionError, match="unsupported"):
        StateIO.load(tmp_path / "old.json")
    with pytest.raises(VisionError, match="labels for"):
        State([1, 2], 0.0, queried_label=[1])


def test_stopping_criteria():
    io = StateIO(0, range(4), [], init_L=[0], init_U=[1, 2, 3])
    queries = StoppingCriteria("num_of_queries", 2)
    cost = StoppingCriteria("cost_limit", 2.5)
    fraction = StoppingCriteria("percent_of_unlabel", 0.5)
    pool = StoppingCriteria()
    io.add_state(State([1], 0.0, cost=[2.0]))
    for c in (queries, cost, fraction, pool):
        c.update_information(io)
    assert not queries.is_stop() and not cost.is_stop() and not fraction.is_stop() and not pool.is_stop()
    io.add_state(State([2], 0.0))
    for c in (queries, cost, fraction):
        c.update_information(io)
        assert c.is_stop()
    io.add_state(State([3], 0.0))
    pool.update_information(io)
    assert pool.is_stop()  # pool exhausted
    assert StoppingCriteria("time_limit", 0).is_stop()
    with pytest.raises(VisionError, match="unknown stopping"):
        StoppingCriteria("accuracy", 0.9)
    with pytest.raises(VisionError, match="needs a non-negative"):
        StoppingCriteria("num_of_queries")


# -- the loop -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openset_digits():
    split = load_digits_split(0)
    known = (0, 1, 2)
    test_view = open_set_split(split.y_test, known)
    x = as_tensors(split.x_train)
    x_test, y_test = as_tensors(split.x_test[test_view.is_known], test_view.known_labels[test_view.is_known])
    init_l = initial_labelled(split.y_train, 2, np.random.default_rng(0), classes=known)
    return split, known, x, x_test, y_test, init_l


def _loop(openset_digits, stateio, strategy="eaoa", rounds=3, seed=0):
    split, known, x, x_test, y_test, _ = openset_digits
    config = ActiveConfig(budget=8, target_steps=25, detector_steps=25, hidden=(32,))
    return ActiveLoop(
        x,
        Oracle(split.y_train, known_classes=known),
        make_strategy(strategy, len(known)),
        StoppingCriteria("num_of_queries", rounds),
        stateio,
        x_test=x_test,
        y_test=y_test,
        num_known=len(known),
        seed=seed,
        config=config,
    )


def _fresh_stateio(openset_digits, path):
    _, _, x, _, y_test, init_l = openset_digits
    return StateIO(
        0, np.arange(len(x)), np.arange(len(y_test)), init_l, np.setdiff1d(np.arange(len(x)), init_l), saving_path=path
    )


@pytest.mark.parametrize("strategy", ["eaoa", "lfosa", "bual", "e2oal", "random"])
def test_resumed_run_equals_uninterrupted_run(openset_digits, tmp_path, strategy):
    full = _loop(openset_digits, _fresh_stateio(openset_digits, tmp_path / "full.json"), strategy).run()

    _loop(openset_digits, _fresh_stateio(openset_digits, tmp_path / "part.json"), strategy, rounds=1).run()
    resumed_io = StateIO.load(tmp_path / "part.json")  # a new process would start here
    assert resumed_io.num_of_query == 1
    resumed = _loop(openset_digits, resumed_io, strategy).run()

    assert resumed.num_of_query == full.num_of_query == 3
    assert resumed.to_dict()["states"] == full.to_dict()["states"]
    assert resumed.initial_point == full.initial_point
    assert json.loads((tmp_path / "part.json").read_text())["states"] == full.to_dict()["states"]


def test_loop_records_open_set_answers(openset_digits, tmp_path):
    io = _loop(openset_digits, _fresh_stateio(openset_digits, None), "eaoa", rounds=2).run()
    ws = io.recover_workspace()
    split = openset_digits[0]
    assert all(split.y_train[i] not in (0, 1, 2) for i in ws.unknown)
    assert all(split.y_train[i] in (0, 1, 2) for i in ws.labelled)
    assert all(0 <= s["query_precision"] <= 1 and "k1" in s["strategy_state"] for s in io)


def test_resume_with_other_settings_is_refused(openset_digits, tmp_path):
    _loop(openset_digits, _fresh_stateio(openset_digits, tmp_path / "s.json"), "random", rounds=1).run()
    with pytest.raises(VisionError, match="different settings"):
        _loop(openset_digits, StateIO.load(tmp_path / "s.json"), "eaoa")


def test_loop_rejects_a_strategy_that_picks_outside_the_pool(openset_digits):
    class Cheater:
        name, requires = "cheater", frozenset()

        def initial_state(self):
            return {}

        def select(self, pool_idx, budget, **kwargs):
            return np.array([-5])

    loop = _loop(openset_digits, _fresh_stateio(openset_digits, None), "random", rounds=1)
    loop.strategy = Cheater()
    with pytest.raises(VisionError, match="outside the unlabelled pool"):
        loop.run()


def test_loop_rejects_unknown_examples_in_the_initial_set(openset_digits):
    split, known, x, x_test, y_test, init_l = openset_digits
    bad = np.append(init_l, np.flatnonzero(split.y_train == 9)[0])
    io = StateIO(0, np.arange(len(x)), [], bad, np.setdiff1d(np.arange(len(x)), bad))
    with pytest.raises(VisionError, match="initial labelled set contains"):
        _loop(openset_digits, io).run()
