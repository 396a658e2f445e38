"""NPROC_PER_NODE & co. -> a torchrun command, as `swift sft` reads them."""

from __future__ import annotations

import sys

import pytest

from vlft.errors import VlftError
from vlft.train.launch import LaunchPlan, is_distributed_worker, launch_plan, torchrun_command


@pytest.mark.parametrize("environ", [{}, {"NPROC_PER_NODE": ""}, {"NPROC_PER_NODE": "1"},
                                     {"NPROC_PER_NODE": "1", "NNODES": "1"}, {"NNODES": "2"}])
def test_single_process_needs_no_launcher(environ):
    assert launch_plan(environ) is None


def test_defaults():
    assert launch_plan({"NPROC_PER_NODE": "4"}) == LaunchPlan(4, 1, 0, "127.0.0.1", 29500)


def test_all_variables():
    environ = {"NPROC_PER_NODE": "8", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5",
               "MASTER_PORT": "29600"}
    assert launch_plan(environ) == LaunchPlan(8, 2, 1, "10.0.0.5", 29600)


def test_one_process_on_each_of_two_nodes_is_distributed():
    assert launch_plan({"NPROC_PER_NODE": "1", "NNODES": "2", "NODE_RANK": "1"}) == LaunchPlan(1, 2, 1)


@pytest.mark.parametrize("name,value", [("NPROC_PER_NODE", "two"), ("NNODES", "1.5"), ("NODE_RANK", "x"),
                                        ("MASTER_PORT", "port")])
def test_non_integer_is_an_error_naming_the_variable(name, value):
    environ = {"NPROC_PER_NODE": "2", name: value}
    with pytest.raises(VlftError, match=f"{name}={value!r}"):
        launch_plan(environ)


def test_zero_processes_is_an_error():
    with pytest.raises(VlftError, match="positive"):
        launch_plan({"NPROC_PER_NODE": "0"})


def test_plan_is_frozen():
    with pytest.raises(AttributeError):
        LaunchPlan(2).nnodes = 3  # type: ignore[misc]


def test_distributed_worker_is_told_by_local_rank():
    assert is_distributed_worker({"LOCAL_RANK": "0", "RANK": "3"})
    assert not is_distributed_worker({"RANK": "0"})
    assert not is_distributed_worker({})


def test_torchrun_command():
    plan = LaunchPlan(4, 2, 1, "10.0.0.5", 29600)
    command = torchrun_command(plan, ["--model", "m", "--dataset", "a.jsonl", "b.jsonl"])
    assert command == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4", "--nnodes", "2",
                       "--node_rank", "1", "--master_addr", "10.0.0.5", "--master_port", "29600",
                       "-m", "vlft.cli.main", "sft", "--model", "m", "--dataset", "a.jsonl", "b.jsonl"]
