"""The statistics core is pure: importing it loads no I/O, data-frame or serving library."""

import subprocess
import sys

MODULES = ("compare", "cuped", "decision", "drift", "power", "quality", "sequential", "srm")
FORBIDDEN = ("pandas", "mlflow", "statsmodels", "sklearn", "starlette", "prometheus_client")


def test_importing_every_stats_module_loads_nothing_forbidden_and_configures_no_logging() -> None:
    imports = "; ".join(f"import gateway.core.stats.{name}" for name in MODULES)
    code = (
        f"import logging, sys; {imports}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad), len(logging.getLogger().handlers))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["0"]
