"""ASHA that keeps its rungs across `--resume`.

Tune restores trials and the search algorithm when a sweep resumes, but not the scheduler's
state: a fresh ASHA has empty rungs, so the trials after the resume are compared only with each
other and ASHA stops nothing it would have stopped before. Here each restored trial replays the
results it reported (Tune's `result.json` in the trial folder) into its bracket, which brings
the recorded rung values back; a trial that had already ended then leaves the bracket, as it
does in `on_trial_complete`.
"""

from __future__ import annotations

import json

from ray.tune.experiment import Trial
from ray.tune.result import EXPR_RESULT_FILE, TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler


class ResumableASHA(ASHAScheduler):
    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        super().on_trial_add(tune_controller, trial)
        if TRAINING_ITERATION not in trial.run_metadata.last_result:
            return  # a new trial, or a restored one that never reported
        bracket = self._trial_info[trial.trial_id]
        for result in reported_results(trial):
            if self._time_attr in result and self._metric in result:
                # Rungs record every value they see, whatever the order trials are replayed in.
                bracket.on_result(trial, result[self._time_attr], self._metric_op * result[self._metric])
        if trial.status in (Trial.TERMINATED, Trial.ERROR):
            del self._trial_info[trial.trial_id]


def reported_results(trial: Trial) -> list[dict]:
    """Every result the trial reported, from its folder in the experiment's storage."""
    fs = trial.storage.storage_filesystem
    try:
        with fs.open_input_stream(f"{trial.path}/{EXPR_RESULT_FILE}") as stream:
            text = stream.readall().decode()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
