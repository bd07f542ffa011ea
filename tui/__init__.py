"""The live monitor (`ftune watch`). Reads the run directory only; never imports torch."""
