"""A training run the web UI starts: the form checked by the CLI's parser, then `vlft sft` as a subprocess whose
run dir and losses the tab follows."""

from __future__ import annotations

from pathlib import Path

from vlft.webui.command import TrainForm, checked_arguments, process_command, sft_argv, shown_command
from vlft.webui.process import TrainingProcess
from vlft.webui.training_log import loss_points, new_run_dir, run_log_file, version_dirs


class TrainRun:
    """`vlft sft argv` running; argv already checked (`start_run`)."""

    def __init__(self, argv: list[str], output_dir: Path, add_version: bool):
        self.argv = argv
        self.command = shown_command(argv)
        self.output_dir = output_dir
        self.add_version = add_version
        self._before = version_dirs(output_dir)  # the run's own v{N}-{time} dir is the one that appears next
        self._run_dir: Path | None = None if add_version else output_dir
        self.process = TrainingProcess(process_command(argv))

    @property
    def run_dir(self) -> Path | None:
        """The run's dir, once `vlft sft` has made it."""
        if self._run_dir is None:
            self._run_dir = new_run_dir(self.output_dir, self._before)
        return self._run_dir

    def losses(self) -> list[tuple[int, float, str]]:
        return loss_points(run_log_file(self.run_dir)) if self.run_dir else []

    def stop(self) -> None:
        self.process.stop()


def start_run(form: TrainForm) -> TrainRun:
    """Check the form's command as `vlft sft` would (VlftError listing every problem), then start it."""
    argv = sft_argv(form)
    args = checked_arguments(argv)
    return TrainRun(argv, Path(args.output_dir), args.add_version)
