"""ftune: fine-tune large language models from a terminal."""

__version__ = "0.1.0"
