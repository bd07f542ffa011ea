"""The headless core: run spec, run directories, events, launcher and the training worker.

Nothing here imports Textual or questionary; torch and the HF stack are imported
only inside the worker's functions.
"""
