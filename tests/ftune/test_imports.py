"""Speed is a feature: the CLI, the monitor and the wizard never import the heavy stack."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def test_cli_tui_wizard_do_not_import_heavy_libraries():
    code = (
        "import sys, ftune.cli, ftune.tui, ftune.tui.progress, ftune.wizard, ftune.runtime.launch, ftune.runtime.runs\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom ftune.cli import main\n"
        "try:\n    main(['--help'], prog_name='ftune')\nexcept SystemExit:\n    pass\n"
        "for cmd in ('train', 'demo', 'ls', 'stop', 'logs', 'rm'):\n"
        "    try:\n        main([cmd, '--help'], prog_name='ftune')\n    except SystemExit:\n        pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("HEAVY=")


def test_python_dash_m_ftune():
    out = subprocess.run([sys.executable, "-m", "ftune", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ftune, version 0.1.0"
