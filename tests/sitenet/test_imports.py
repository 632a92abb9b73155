"""The core and the service import without torch (the serving install has none)."""

import subprocess
import sys


def test_core_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import sitenet, sitenet.structure, sitenet.features, sitenet.batch, sitenet.cache, sitenet.config, "
        "sitenet.dataset, sitenet.hub, sitenet.cli\n"
        "from sitenet.cli import build_parser; build_parser()\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
