"""Speed is a feature: the CLI, the monitor and the wizard never import the heavy stack."""

import subprocess
import sys

HEAVY = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")


def test_cli_tui_wizard_do_not_import_heavy_libraries():
    code = (
        "import sys, ftune.cli, ftune.tui, ftune.tui.progress, ftune.wizard, ftune.runtime.launch, ftune.runtime.runs\n"
        "import ftune.wizard.flow, ftune.wizard.advanced, ftune.wizard.noninteractive, ftune.runtime.catalog\n"
        "import ftune.runtime.memory_estimate, ftune.runtime.data.load\n"
        "import ftune.tui.app, ftune.tui.runs_list, ftune.tui.screens, textual_plotext\n"
        "import ftune.tui.chat, ftune.runtime.infer.modelcard, ftune.runtime.infer.metrics, ftune.runtime.infer.plot\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys\nfrom ftune.cli import main\n"
        "try:\n    main(['--help'], prog_name='ftune')\nexcept SystemExit:\n    pass\n"
        "for cmd in ('train', 'demo', 'ls', 'stop', 'logs', 'rm', 'new', 'presets', 'watch',\n"
        "            'export', 'chat', 'serve', 'eval', 'plot', 'mcp'):\n"
        "    try:\n        main([cmd, '--help'], prog_name='ftune')\n    except SystemExit:\n        pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY + ('mcp',)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("HEAVY=")


def test_python_dash_m_ftune():
    out = subprocess.run([sys.executable, "-m", "ftune", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ftune, version 0.1.0"


def test_wizard_writing_a_run_file_does_not_import_heavy_libraries(tmp_path):
    """`ftune new --yes` end to end (catalog, data check, memory estimate, writing) stays light."""
    from tests.conftest import write_messages

    write_messages(tmp_path / "train.jsonl", 8)
    code = (
        "import sys\nfrom ftune.cli import main\n"
        "try:\n    main(['--runs-dir', 'runs', 'new', '--model', 'Qwen/Qwen2.5-0.5B-Instruct', '--data', 'train.jsonl',"
        " '--yes'], prog_name='ftune')\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip().endswith("HEAVY="), out.stdout + out.stderr
    assert (tmp_path / "runs" / "run-01" / "run.yaml").is_file()
