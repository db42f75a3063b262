"""Trade-off studies: a grid of run configs run as Optuna trials, summarised per budget.

  config.py   the study YAML schema (pydantic)        grid.py     grid expansion and collapse
  storage.py  Optuna storage and the study folder     worker.py   one worker process
  runner.py   create/join, N workers, trials.csv      summary.py  best lr, CIs, Pareto
CLI: `python -m idlora_core.study STUDY.yaml --out DIR [--storage URL] [--workers N]`.
"""

from idlora_core.study.config import StudyConfig, load_study, parse_study
from idlora_core.study.grid import expand_grid
from idlora_core.study.runner import export_tables, run_study, summary_table, trials_table
from idlora_core.study.summary import pareto_mask, summarize, t_interval

__all__ = ["StudyConfig", "export_tables", "expand_grid", "load_study", "pareto_mask", "parse_study",
           "run_study", "summarize", "summary_table", "t_interval", "trials_table"]
