"""README and CI agree: CI runs exactly the README's test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(text):
    lines = text.splitlines()
    return [lines[i + 1] for i, line in enumerate(lines) if line.strip() == "```bash"]


def test_ci_runs_the_readme_test_command():
    readme = _commands((ROOT / "README.md").read_text())
    test_command = next(c for c in readme if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_main_job_runs_the_mnist_benchmark():
    assert any(c.endswith("attrkit bench mnist-lr") for c in _commands((ROOT / "README.md").read_text()))
