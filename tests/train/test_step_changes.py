"""What vlft changes in transformers' training step stays findable and in force: every Trainer method vlft
overrides is declared (SftTrainer.OVERRIDES, listed with the reasons in vlft/train/sft.py's docstring) and still
exists in transformers with the parameters vlft's override takes; a rename there fails here by name instead of
silently skipping the override. Models, processors and adapters load in one module (vlft/model/loading.py)."""

from __future__ import annotations

import inspect
import re

from transformers import Trainer

from tests.conftest import REPO
from vlft.train.trainer import SftTrainer


def _defined_by_vlft() -> dict[str, object]:
    """Methods the classes of vlft in SftTrainer's MRO define themselves."""
    out = {}
    for cls in SftTrainer.__mro__:
        if cls.__module__.startswith("vlft."):
            out.update({name: f for name, f in vars(cls).items()
                        if callable(f) and not (name.startswith("__") and name.endswith("__"))})
    return out


def test_every_override_still_exists_in_transformers():
    missing = [name for name in SftTrainer.OVERRIDES if not hasattr(Trainer, name)]
    assert not missing, f"transformers' Trainer no longer has {missing}: vlft's override would never run"


def test_every_override_takes_transformers_parameters():
    for name in SftTrainer.OVERRIDES:
        ours = inspect.signature(_defined_by_vlft()[name]).parameters
        theirs = inspect.signature(getattr(Trainer, name)).parameters
        takes_any = any(p.kind == p.VAR_KEYWORD for p in ours.values())
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        unknown = [p for p in theirs if p not in ours and theirs[p].kind not in variadic and not takes_any]
        assert not unknown, f"Trainer.{name} takes {unknown}, vlft's override does not"


def test_every_method_vlft_replaces_is_declared_and_listed_in_sft_py():
    replaced = sorted(name for name in _defined_by_vlft() if hasattr(Trainer, name))
    assert replaced == sorted(SftTrainer.OVERRIDES)
    docstring = (REPO / "vlft" / "train" / "sft.py").read_text().split('"""')[1]
    assert [name for name in replaced if f"`{name}`" not in docstring] == []


def test_models_processors_and_adapters_load_in_one_module():
    loads = re.compile(r"\b(AutoModelForImageTextToText|AutoProcessor|PeftModel)\.from_pretrained\(")
    outside = [f"{path.relative_to(REPO)}:{i}" for root in ("vlft", "cli") for path in (REPO / root).rglob("*.py")
               if path.name != "loading.py"
               for i, line in enumerate(path.read_text().splitlines(), 1)
               if loads.search(line) and not line.lstrip().startswith(("#", '"', "`"))
               and "from_pretrained(DIR)" not in line and "from_pretrained(base_model, DIR)" not in line]
    assert outside == [], "load through vlft/model/loading.py"
