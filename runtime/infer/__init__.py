"""Using a trained run: loading its model (loading.py), generating (generate.py), `ftune serve` (serve.py),
`ftune export` (export.py), `ftune eval` and its scores (evaluate.py, metrics.py), the model card
(modelcard.py) and the loss plot (plot.py)."""
