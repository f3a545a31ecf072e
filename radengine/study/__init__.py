"""``radengine study``: a whole transfer study from one YAML.

A study spec names the initialisations (scratch, pretraining variants, imported weights
files, MLflow models) and the evaluations (protocol x task x label fraction x seed x data).
It expands into jobs with content keys (:mod:`radengine.study.spec`,
:mod:`radengine.study.jobs`); the local launcher (:mod:`radengine.study.run`) runs the jobs
that have no finished run yet, as subprocesses, and logs the study's report. See
docs/studies.md.
"""

__all__: list[str] = []
