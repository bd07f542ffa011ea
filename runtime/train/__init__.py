"""The training worker: the process (worker.py), its recipe (recipe.py: setup, then train), the model it trains
(model.py), optimisers (optim.py), TrainingArguments (args.py), the stage registry (stages/: one file a
stage, with its trainer builder), the SFT trainer (sft.py), the frozen reference and reward models (frozen.py), the
events callback (callbacks.py), failures as sentences (hints.py) and what follows training (after.py).
Run as `python -m ftune.runtime.train RUN_DIR`."""
