"""The pure core imports no web framework, server, metrics or registry client.

A second line behind the import-linter contracts in pyproject.toml: those read the import
statements, this runs the imports and looks at what actually got loaded.
"""

import subprocess
import sys

import pytest

FORBIDDEN = (
    "uvicorn",
    "httpx",
    "prometheus_client",
    "gateway.serving.registry",
    "gateway.http.app",
    "gateway.http.server",
)
# mlflow.pyfunc imports starlette (through fastapi) itself, so payload cannot be checked for it;
# the import-linter contracts keep the gateway's own starlette imports in gateway.http.
NO_WEB = ("starlette", "fastapi")


@pytest.mark.parametrize(
    ("module", "also_forbidden"),
    [
        ("gateway.core.config", ("mlflow", "pandas", "yaml", *NO_WEB)),
        ("gateway.core.config_file", ("mlflow", "pandas", *NO_WEB)),
        ("gateway.core.errors", ("mlflow", "pandas", "pydantic", "yaml", *NO_WEB)),
        ("gateway.core.routing", ("mlflow", "pandas", "pydantic", "yaml", *NO_WEB)),
        ("gateway.core.rollout", ("mlflow", "pandas", "pydantic", "yaml", *NO_WEB)),
        ("gateway.core.record", ("mlflow", "pandas", "pydantic", "yaml", *NO_WEB)),
        ("gateway.core.spans", ("mlflow", "pandas", "pydantic", "yaml", "opentelemetry", *NO_WEB)),
        ("gateway.protocol.payload", ()),
    ],
)
def test_pure_module_imports_nothing_with_side_effects(
    module: str, also_forbidden: tuple[str, ...]
) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN + also_forbidden!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_building_the_command_line_imports_no_mlflow_numerics_or_duckdb() -> None:
    # Every `gateway` command builds the whole parser first: it must stay cheap (~0.3 s, not ~3 s).
    code = (
        "import sys\n"
        "from gateway.commands.cli import _parser\n"
        "_parser({})\n"
        "heavy = ('mlflow', 'scipy', 'numpy', 'pandas', 'duckdb', 'sklearn')\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
