"""llmkit/launch.py: a failed multi-process launch prints its one useful line and the log path."""

import sys

from llmkit.launch import first_useful_line, launch_command, run_launch

WALL = (
    """[W1204 gloo] something about sockets
Traceback (most recent call last):
  File "recipes/sft/train.py", line 60, in <module>
[rank1]: error: trainer.output_dir outputs/sft-tiny already holds a trained model; pass --trainer.overwrite_output_dir
error: trainer.output_dir outputs/sft-tiny already holds a trained model; pass --trainer.overwrite_output_dir
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
"""
    + "  elastic frame\\n" * 70
)


def test_first_useful_line_finds_the_llmkit_error_in_the_wall():
    assert first_useful_line(WALL) == (
        "[rank1]: error: trainer.output_dir outputs/sft-tiny already holds a trained "
        "model; pass --trainer.overwrite_output_dir"
    )
    assert (
        first_useful_line("llmkit.errors.ConfigError: unknown key 'x'\n")
        == "llmkit.errors.ConfigError: unknown key 'x'"
    )
    assert first_useful_line("Traceback\n  plain noise\n") is None


def test_failed_multi_process_launch_prints_one_line_and_the_log(tmp_path, capsys):
    script = "import sys; sys.stderr.write(" + repr(WALL) + "); sys.exit(1)"
    code = run_launch([sys.executable, "-c", script], multi_process=True, log_dir=tmp_path)
    err = capsys.readouterr().err.strip().splitlines()[1:]  # after the line naming the log
    assert code == 1 and len(err) == 2
    assert err[0].endswith("pass --trainer.overwrite_output_dir") and "already holds" in err[0]
    log = err[1].split("full log: ")[1].rstrip(")")
    assert "ChildFailedError" in open(log).read()  # the whole wall is kept in the log


def test_successful_launch_leaves_no_log(tmp_path):
    assert run_launch([sys.executable, "-c", "pass"], multi_process=True, log_dir=tmp_path) == 0
    assert list(tmp_path.iterdir()) == []


def test_launch_command_names_the_accelerate_config():
    cmd = launch_command("sft", "cpu_ddp", 2, ["--config", "x.yaml"])
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"] and cmd[4].endswith("cpu_ddp.yaml")
    assert cmd[5:7] == ["--num_processes", "2"] and cmd[-2:] == ["--config", "x.yaml"]
