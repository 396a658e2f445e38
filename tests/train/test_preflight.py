"""Issue 21, errors found too late: every problem a command has with the machine (tracker packages, scheduler
arguments, unwritable dirs) reported at once before anything loads; a DeepSpeed worker's error printed last by
its launcher; a failed run's dir removed when it holds nothing, else marked FAILED."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, VLFT
from vlft.cli.main import main
from vlft.errors import VlftError
from vlft.train.launch import LaunchPlan, first_worker_error, launch_plan, worker_error_recorded
from vlft.train.preflight import lr_scheduler_problems, raise_problems, report_to_problems
from vlft.train.run_dir import FAILED, check_writable, failed_run_handled, finish_failed_run

EXAMPLES = REPO / "examples" / "data"
NEEDS_PROC = pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
GOOD_ROW = {"messages": [{"role": "user", "content": "Where is Hangzhou?"},
                         {"role": "assistant", "content": "Zhejiang."}]}
BAD_ROW = {"messages": [{"role": "user", "content": "<image>What is this?"},  # no image given
                        {"role": "assistant", "content": "A cat."}]}


def without_integration(monkeypatch, name: str) -> None:
    """transformers' availability check of `name` says no, as on a machine without the package."""
    from transformers.integrations import integration_utils

    monkeypatch.setattr(integration_utils, f"is_{name}_available", lambda: False)


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if the model is resolved (downloaded / built), data is encoded or a model loads."""
    import transformers

    import vlft.model.hub
    import vlft.train.sft

    def loaded(*args, **kwargs):
        raise AssertionError("loaded something before the arguments were checked")

    monkeypatch.setattr(vlft.train.sft, "build_encoder", loaded)
    monkeypatch.setattr(vlft.model.hub, "resolve_model_dir", loaded)
    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", loaded)


# 1. Every problem at once, before anything loads.

@NEEDS_PROC
@pytest.mark.parametrize("launcher", [[], ["--deepspeed", "zero2"]])  # one process; the torchrun launcher
def test_every_problem_is_reported_at_once_before_anything_loads(launcher, tmp_path, monkeypatch, capsys,
                                                                   nothing_loads):
    without_integration(monkeypatch, "wandb")
    monkeypatch.setenv("VLFT_CACHE_HOME", "/proc/vlft-test-cache")
    monkeypatch.delenv("NPROC_PER_NODE", raising=False)
    code = main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(EXAMPLES / "train.jsonl"),
                 "--report_to", "tensorboard", "wandb", "--lr_scheduler_type", "cosine_with_min_lr",
                 "--output_dir", "/proc/vlft-test-out", *launcher,
                 "--resume_from_checkpoint", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    first, *listed = err.strip().splitlines()
    assert first == "vlft sft: error: 5 problems with this command:"
    assert listed[0].startswith("  - --report_to wandb: not installed") and "pip install wandb" in listed[0]
    assert listed[1].startswith("  - --lr_scheduler_type cosine_with_min_lr needs exactly one of min_lr or "
                                "min_lr_rate in --lr_scheduler_kwargs")
    assert listed[2].startswith("  - --output_dir /proc/vlft-test-out: no directory can be made in /proc")
    assert listed[3].startswith("  - --cache_dir (VLFT_CACHE_HOME) /proc/vlft-test-cache: no directory can be made")
    assert listed[4].startswith(f"  - --resume_from_checkpoint {tmp_path / 'missing'}: no such directory")
    assert len(listed) == 5


def test_argument_conflicts_are_listed_with_the_machine_problems(tmp_path, monkeypatch, capsys, nothing_loads):
    without_integration(monkeypatch, "swanlab")
    code = main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(EXAMPLES / "train.jsonl"),
                 "--chunked_loss", "true", "--deepspeed", "zero3", "--report_to", "swanlab",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "2 problems with this command" in err
    assert "--chunked_loss true does not run under ZeRO-3" in err and "--report_to swanlab: not installed" in err
    assert not (tmp_path / "out").exists()


def test_value_problems_of_the_arguments_are_listed_with_the_machine_problems(tmp_path, monkeypatch, capsys,
                                                                              nothing_loads):
    """Problems the values show on their own (checked when the arguments are built) come in the same one error
    as those found with the machine's packages and dirs: none is held back for a second try."""
    without_integration(monkeypatch, "wandb")
    code = main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(EXAMPLES / "train.jsonl"),
                 "--warmup_ratio", "1.5", "--packing", "true", "--lora_rank", "0", "--split_dataset_ratio", "2",
                 "--system", str(tmp_path / "missing.txt"), "--report_to", "wandb",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    first, *listed = err.strip().splitlines()
    assert first == "vlft sft: error: 6 problems with this command:", err
    for expected in (f"--system {tmp_path / 'missing.txt'}: no such file", "--split_dataset_ratio must be in [0, 1)",
                     "--packing true needs --max_length", "--warmup_ratio must be in [0, 1), got 1.5",
                     "--lora_rank must be positive, got 0", "--report_to wandb: not installed"):
        assert sum(line.startswith(f"  - {expected}") for line in listed) == 1, (expected, err)
    assert not (tmp_path / "out").exists()


def test_scheduler_arguments_given_on_the_command_line_satisfy_the_check(tmp_path):
    from vlft.arguments import SftArguments
    from vlft.cli.parsing import parse_args
    from vlft.train.sft import check_run_arguments

    if "lr_scheduler_kwargs" not in SftArguments.__dataclass_fields__:
        pytest.skip("no --lr_scheduler_kwargs")
    argv = ["--model", "m", "--dataset", "d.jsonl", "--report_to", "none", "--output_dir", str(tmp_path),
            "--lr_scheduler_type", "cosine_with_min_lr"]
    with pytest.raises(VlftError, match="needs exactly one of min_lr or min_lr_rate"):
        check_run_arguments(parse_args(SftArguments, argv, "sft"), cuda=False)
    check_run_arguments(parse_args(SftArguments, [*argv, "--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}'], "sft"),
                        cuda=False)


def test_one_problem_is_raised_as_it_is_and_none_raises_nothing():
    raise_problems([])
    with pytest.raises(VlftError) as error:
        raise_problems(["--x 1: bad"])
    assert str(error.value) == "--x 1: bad"
    with pytest.raises(VlftError) as error:
        raise_problems(["a", "b\nc"])
    assert str(error.value) == "2 problems with this command:\n  - a\n  - b\n    c"


def test_report_to(monkeypatch):
    assert report_to_problems(["tensorboard"]) == []  # a dependency of vlft
    assert report_to_problems(["none"]) == report_to_problems(["all"]) == report_to_problems([]) == []
    for name in ("wandb", "swanlab", "mlflow"):
        without_integration(monkeypatch, name)
        [problem] = report_to_problems(["tensorboard", name])
        assert problem.startswith(f"--report_to {name}: not installed") and f"pip install {name}" in problem
    [problem] = report_to_problems(["wandbb"])
    assert problem.startswith("--report_to wandbb: unknown") and "wandb" in problem


def _scheduler_refuses(name: str, kwargs: dict | None) -> bool:
    """Ground truth: whether transformers' get_scheduler, called as Trainer calls it, raises."""
    from transformers.optimization import get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    try:
        get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10, scheduler_specific_kwargs=kwargs)
    except (ValueError, TypeError):
        return True
    return False


@pytest.mark.parametrize("name, kwargs", [
    ("cosine_with_min_lr", None), ("cosine_with_min_lr", {"min_lr_rate": 0.1}),
    ("cosine_with_min_lr", {"min_lr": 1e-6}),
    ("cosine_with_min_lr", {"min_lr": 1e-6, "min_lr_rate": 0.1}), ("cosine_warmup_with_min_lr", {}),
    ("cosine_warmup_with_min_lr", {"min_lr_rate": 0.1}), ("warmup_stable_decay", None),
    ("warmup_stable_decay", {"num_decay_steps": 3}), ("cosine_with_restarts", {"num_cycle": 2}),
    ("cosine_with_restarts", {"num_cycles": 2}), ("cosine", None), ("cosine", {"min_lr_rate": 0.1}),
    ("linear", {}), ("polynomial", {"power": 2.0}), ("constant", None), ("constant_with_warmup", None),
    ("inverse_sqrt", {"timescale": 5}), ("reduce_lr_on_plateau", {"patience": 3}), ("cosine_annealing", None),
])
def test_lr_scheduler_problems_are_what_transformers_would_refuse(name, kwargs):
    problems = lr_scheduler_problems(name, kwargs)
    assert bool(problems) == _scheduler_refuses(name, kwargs), problems


def test_lr_scheduler_messages():
    [missing] = lr_scheduler_problems("warmup_stable_decay", None)
    assert missing.startswith("--lr_scheduler_type warmup_stable_decay needs num_decay_steps in --lr_scheduler_kwargs")
    [unknown] = lr_scheduler_problems("cosine_with_restarts", '{"num_cycle": 2}')  # JSON text as well
    assert "takes no num_cycle (it takes num_cycles)" in unknown
    assert lr_scheduler_problems("cosine_annealing", None)[0].startswith("--lr_scheduler_type cosine_annealing: "
                                                                         "unknown; transformers has linear, cosine")
    assert "expected a JSON object" in lr_scheduler_problems("cosine", [1, 2])[0]


@NEEDS_PROC
def test_dirs_where_nothing_can_be_made_are_refused_though_permissions_allow(tmp_path):
    with pytest.raises(VlftError, match="--output_dir /proc/x/out: no directory can be made in /proc"):
        check_writable(Path("/proc/x/out"))
    with pytest.raises(VlftError, match="^--cache_dir /proc/c: no directory can be made in /proc"):
        check_writable(Path("/proc/c"), "--cache_dir")
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []  # the trial dir is gone


# 2. A worker's error, printed last by the launcher.

def test_launch_plan_of_one_process_takes_the_rendezvous_address():
    assert launch_plan({"MASTER_PORT": "29701"}) is None
    assert launch_plan({"MASTER_PORT": "29701", "MASTER_ADDR": "10.0.0.5"}, single=True) == LaunchPlan(
        1, 1, 0, "10.0.0.5", 29701)
    assert launch_plan({"NPROC_PER_NODE": "1"}, single=True) == LaunchPlan(1)


def test_workers_record_their_errors_for_the_launcher(tmp_path):
    for rank, error in ((1, VlftError("data.jsonl:3: bad")), (0, RuntimeError("out of memory"))):
        with pytest.raises(type(error)):
            with worker_error_recorded({"VLFT_WORKER_ERRORS": str(tmp_path), "RANK": str(rank)}):
                raise error
    first = first_worker_error(tmp_path)
    assert (first.rank, first.code, first.message) == (1, 2, "data.jsonl:3: bad")
    (tmp_path / "rank1.json").unlink()
    second = first_worker_error(tmp_path)
    assert (second.rank, second.code, second.message) == (0, 1, "RuntimeError: out of memory")
    with pytest.raises(VlftError):
        with worker_error_recorded({"RANK": "0"}):  # not started by vlft's launcher: nothing written
            raise VlftError("x")
    assert first_worker_error(tmp_path / "none") is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bad_data(path: Path) -> Path:
    path.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps(BAD_ROW) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_deepspeed_worker_data_error_is_the_last_thing_printed(tmp_path, vlft_cache, vlft_console):
    data = bad_data(tmp_path / "bad.jsonl")
    env = {k: v for k, v in os.environ.items() if k not in ("NPROC_PER_NODE", "NNODES", "NODE_RANK")}
    code, output = vlft_console([VLFT, "sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(data), "--deepspeed",
                                 "zero2", "--report_to", "none", "--output_dir", str(tmp_path / "out")],
                                {**env, "CUDA_VISIBLE_DEVICES": "", "MASTER_PORT": str(_free_port())}, tmp_path)
    assert code == 2, output[-3000:]  # the worker's exit code, not torchrun's 1
    assert "ChildFailedError" in output  # torchrun's report comes first ...
    tail = output.strip().splitlines()[-2:]  # ... and the worker's error last
    assert tail == ["vlft sft: error: 1 bad dataset line(s) (`vlft data check` lists them all; --strict false skips "
                    "them):", f"  {data}:2: messages[0].content: 1 <image> placeholders up to here but 0 images given"]
    assert list((tmp_path / "out").iterdir()) == []  # 3. the run dir, holding only args.json, is removed


# 3. A failed run's dir: removed when it holds nothing, else marked FAILED.

def run_dir_with(tmp_path: Path, *names: str) -> Path:
    run = tmp_path / "v0-20260304-050607"
    (run / "runs" / "Mar04_05-06-07").mkdir(parents=True)  # tensorboard's dir, made before the first step
    (run / "args.json").write_text("{}")
    (run / "logging.jsonl").write_text("")
    for name in names:
        if name == "logging.jsonl":
            (run / name).write_text('{"step": 5, "loss": 1.2}\n')
        else:
            (run / name).mkdir()
    return run


def test_failed_run_without_results_is_removed(tmp_path):
    run = run_dir_with(tmp_path, ".saving")  # an unfinished first save is no result either
    assert finish_failed_run(run, "boom", created=True).startswith(f"removed {run}")
    assert not run.exists() and tmp_path.is_dir()


@pytest.mark.parametrize("results", [["checkpoint-100"], ["logging.jsonl"], [".checkpoint-100.old"]])
def test_failed_run_with_results_is_kept_and_marked(tmp_path, results):
    run = run_dir_with(tmp_path, *results)
    assert finish_failed_run(run, "RuntimeError: CUDA out of memory", created=True) == (
        f"{run}: kept; {run / FAILED} says why the run failed")
    text = (run / FAILED).read_text()
    assert text.startswith("vlft sft failed at ") and text.endswith(":\nRuntimeError: CUDA out of memory\n")
    assert (run / "args.json").is_file()


def test_a_dir_the_run_did_not_make_is_never_removed(tmp_path):
    run = run_dir_with(tmp_path)  # --add_version false: the user's own dir
    finish_failed_run(run, "boom", created=False)
    assert (run / "args.json").is_file() and "boom" in (run / FAILED).read_text()
    with failed_run_handled(run, created=False):  # a later run there succeeds: the old mark goes
        pass
    assert not (run / FAILED).exists()


@pytest.mark.slow
def test_one_process_data_error_removes_its_run_dir(tmp_path, vlft_cache, capsys, caplog):
    data = bad_data(tmp_path / "bad.jsonl")
    (tmp_path / "out" / "v0-20250101-000000").mkdir(parents=True)  # an earlier run, untouched
    code = main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", str(data), "--report_to", "none",
                 "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().endswith("1 <image> placeholders up to here but 0 images given")
    assert f"removed {tmp_path / 'out' / 'v1-'}" in caplog.text
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["v0-20250101-000000"]


def test_a_run_that_fails_after_a_checkpoint_is_kept_and_marked(tmp_path, monkeypatch, capsys):
    import vlft.train.sft

    seen = []

    def fails_after_a_checkpoint(args, checks=None):
        run = Path(args.output_dir)
        seen.append((run, args.add_version))
        (run / "checkpoint-10").mkdir()
        raise VlftError("data.jsonl:3: boom")

    monkeypatch.setattr(vlft.train.sft, "run_sft", fails_after_a_checkpoint)
    code = main(["sft", "--model", "vlft/tiny-qwen3-vl", "--dataset", "data.jsonl", "--report_to", "none",
                 "--output_dir", str(tmp_path / "out")])
    assert code == 2
    [(run, add_version)] = seen
    assert run.parent == tmp_path / "out" and run.name.startswith("v0-") and add_version is False
    assert (run / "checkpoint-10").is_dir() and (run / FAILED).read_text().endswith("\ndata.jsonl:3: boom\n")
    assert capsys.readouterr().err.strip().endswith("vlft sft: error: data.jsonl:3: boom")
