"""The architecture contracts of pyproject.toml [tool.importlinter], checked on every test run:
imports only go down kernels <- attention <- recsys <- pipelines, serving, and no package has an
import cycle between its modules (function-level imports count)."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_import_contracts_hold() -> None:
    assert lint_imports(config_filename=str(PYPROJECT), no_cache=True) == 0


def test_a_layer_violation_is_caught(tmp_path: Path) -> None:
    """Negative control: a contract that the current code breaks (recsys imports attention, so
    'attention above recsys' is violated) makes the check fail."""
    config = tmp_path / "contracts.toml"
    config.write_text('[tool.importlinter]\nroot_packages = ["recsys", "attention"]\n\n'
                      '[[tool.importlinter.contracts]]\nname = "inverted"\ntype = "layers"\n'
                      'layers = ["attention", "recsys"]\n')
    assert lint_imports(config_filename=str(config), no_cache=True) == 1
