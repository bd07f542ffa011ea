"""Training data: formats and row rules (formats.py), a run's data sets (load.py), tokenising with an exact mask
(tokenize.py), the columns each stage's trainer reads (columns.py), the prepared and cached result (prepare.py)
and `ftune data check` (check.py). Nothing here imports torch."""
