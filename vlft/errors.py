"""The one error type the CLI prints without a traceback."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


class VlftError(Exception):
    """A problem with the user's input (data, arguments, model dir): printed as is, exit code 2."""


class DataError(VlftError):
    """A bad dataset line, reported the way a compiler reports: `file:line: field: problem`."""

    def __init__(self, problem: str, *, source: str | None = None, line: int | None = None, field: str | None = None):
        self.problem = problem
        self.source = source
        self.line = line
        self.field = field
        super().__init__(self.format())

    def format(self) -> str:
        place = ""
        if self.source is not None:
            place = f"{self.source}:{self.line}: " if self.line is not None else f"{self.source}: "
        field = f"{self.field}: " if self.field else ""
        return f"{place}{field}{self.problem}"

    def at(self, source: str | None, line: int | None) -> "DataError":
        """The same problem, placed at a file and line (keeps an inner place if one is set)."""
        if self.source is None:
            self.source, self.line = source, line
            self.args = (self.format(),)
        return self

    def within(self, prefix: str) -> "DataError":
        """The same problem with `prefix` put in front of its field path."""
        self.field = prefix if not self.field else f"{prefix}.{self.field}"
        self.args = (self.format(),)
        return self


def collected(problems: list[str], check: Callable[..., T], *args: Any) -> T | None:
    """check(*args); None, with the VlftError's message appended to `problems`, when it raises one."""
    try:
        return check(*args)
    except VlftError as e:
        problems.append(str(e))
        return None


def listed_problems(problems: list[str]) -> str:
    """Problems as one message: a single one as it is, several counted and listed."""
    if len(problems) == 1:
        return problems[0]
    listed = "\n".join("  - " + p.replace("\n", "\n    ") for p in problems)
    return f"{len(problems)} problems with this command:\n{listed}"


class ArgumentProblems(VlftError):
    """Every problem a command's arguments show on their own. `arguments` is the instance as far as it was built,
    so that a command can add what else it checks before loading anything and report it all in one error."""

    def __init__(self, problems: list[str], arguments: object = None):
        self.problems = list(problems)
        self.arguments = arguments
        super().__init__(listed_problems(self.problems))
