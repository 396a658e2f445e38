"""What a `vlft sft` command needs from the machine and from transformers, checked before any data or model
loads: its --report_to integrations installed, its lr scheduler given the arguments it requires, its output and
cache dirs writable. Left to transformers, each fails only when the Trainer is built or trains, after the model
has loaded, with a traceback. `check_run_arguments` (sft.py) raises every problem found in one error."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

from vlft.errors import VlftError, collected, listed_problems
from vlft.paths import cache_root
from vlft.train.run_dir import check_writable

# --report_to name -> (transformers' own availability check in integrations.integration_utils, what to install).
# transformers' callbacks call the same checks, but only when the Trainer is built.
INTEGRATIONS = {
    "wandb": ("is_wandb_available", "wandb"),
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "comet_ml": ("is_comet_available", "comet-ml (and set COMET_API_KEY)"),
    "clearml": ("is_clearml_available", "clearml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "neptune": ("is_neptune_available", "neptune"),
    "trackio": ("is_trackio_available", "trackio"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
}
# Scheduler arguments transformers' get_scheduler passes itself; the others come from --lr_scheduler_kwargs.
SUPPLIED = frozenset({"optimizer", "num_warmup_steps", "num_training_steps", "last_epoch"})
# Schedulers that get_scheduler calls without --lr_scheduler_kwargs (transformers 5.x optimization.py).
NO_KWARGS = frozenset({"constant", "constant_with_warmup"})
# Schedulers needing one of two arguments that their signatures make optional (checked in the function body).
ONE_OF = {"cosine_with_min_lr": ("min_lr", "min_lr_rate"), "cosine_warmup_with_min_lr": ("min_lr", "min_lr_rate")}


def raise_problems(problems: list[str]) -> None:
    """One VlftError listing every problem (a single one as it is); nothing when there are none."""
    if problems:
        raise VlftError(listed_problems(problems))


def preflight_problems(args) -> list[str]:
    """Every problem of an sft command with this machine and with transformers' integrations and schedulers."""
    problems = report_to_problems(args.report_to)
    problems += lr_scheduler_problems(args.lr_scheduler_type, getattr(args, "lr_scheduler_kwargs", None))
    collected(problems, check_writable, Path(args.output_dir), "--output_dir")
    collected(problems, check_writable, cache_root(args.cache_dir), "--cache_dir (VLFT_CACHE_HOME)")
    return problems


def report_to_problems(report_to: list[str] | str | None) -> list[str]:
    """A problem per --report_to integration that transformers does not know, or whose package is missing."""
    from transformers.integrations import integration_utils

    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    if names in ([], ["none"], ["all"]):  # transformers takes none and all alone only
        return []
    known = integration_utils.INTEGRATION_TO_CALLBACK
    problems = []
    for name in names:
        if name not in known:
            problems.append(f"--report_to {name}: unknown; transformers takes none, all or "
                            f"{', '.join(known)}")
        elif not getattr(integration_utils, INTEGRATIONS.get(name, ("",))[0], lambda: True)():
            problems.append(f"--report_to {name}: not installed in this Python ({sys.executable}); "
                            f"pip install {INTEGRATIONS[name][1]}, or leave {name} out of --report_to")
    return problems


def lr_scheduler_problems(name: str, kwargs: dict | str | None) -> list[str]:
    """A problem per scheduler argument that transformers' get_scheduler(name, ...) would miss or refuse."""
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION
    from transformers.trainer_utils import SchedulerType

    try:
        schedule = TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(name)]
    except (ValueError, KeyError):
        return [f"--lr_scheduler_type {name}: unknown; transformers has "
                f"{', '.join(t.value for t in TYPE_TO_SCHEDULER_FUNCTION)}"]
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as e:
            return [f"--lr_scheduler_kwargs {kwargs!r}: not JSON ({e})"]
    if kwargs is not None and not isinstance(kwargs, dict):
        return [f"--lr_scheduler_kwargs {json.dumps(kwargs)}: expected a JSON object of argument names"]
    kwargs = kwargs or {}
    if name in NO_KWARGS:
        return []
    parameters = inspect.signature(schedule).parameters
    named = {n: p for n, p in parameters.items() if n not in SUPPLIED
             and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    problems = []
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        unknown = [k for k in kwargs if k not in named]
        if unknown:
            problems.append(f"--lr_scheduler_kwargs: --lr_scheduler_type {name} takes no {', '.join(unknown)} "
                            f"(it takes {', '.join(named) or 'nothing'})")
    missing = [n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        problems.append(f"--lr_scheduler_type {name} needs {', '.join(missing)} in --lr_scheduler_kwargs, e.g. "
                        f"--lr_scheduler_kwargs '{json.dumps(dict.fromkeys(missing, 1))}'")
    either = ONE_OF.get(name)
    if either and sum(kwargs.get(k) is not None for k in either) != 1:
        problems.append(f"--lr_scheduler_type {name} needs exactly one of {' or '.join(either)} in "
                        f"--lr_scheduler_kwargs, e.g. --lr_scheduler_kwargs '{{\"{either[1]}\": 0.1}}'")
    return problems
