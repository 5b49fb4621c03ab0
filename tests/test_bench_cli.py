"""``attrkit bench``'s one command line: the listing, the dispatch of every study and tool, the report path."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest

import attrkit.cli
from attrkit_bench.cli import main
from attrkit_bench.commands import STUDIES, TOOLS
from attrkit_bench.report.pages import kind, markdown
from attrkit_bench.settings import SETTINGS
from attrkit_bench.studies.spec import SPECS_DIR, fill, load_spec, spec_file, variant

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def test_list_names_every_setting_study_and_tool(capsys: pytest.CaptureFixture[str]) -> None:
    assert attrkit.cli.main(["bench", "--list"]) == 0  # through the entry point, as a user runs it
    out = capsys.readouterr().out
    for name in [*SETTINGS, *STUDIES, *TOOLS]:
        assert any(line.startswith(f"{name} ") for line in out.splitlines()), name
    assert all(s.size in out for s in SETTINGS.values())


@pytest.mark.parametrize("name", [*STUDIES, *TOOLS])
def test_every_study_and_tool_is_dispatched(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module((STUDIES | TOOLS)[name].module)
    assert callable(module.add_arguments) and callable(module.run)
    with pytest.raises(SystemExit) as exited:
        main([name, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: attrkit bench {name}")
    assert ("--spec FILE" in out) == (name in STUDIES)


@pytest.mark.parametrize("study", STUDIES)
def test_every_study_has_its_spec_file(study: str) -> None:
    assert spec_file(study) == SPECS_DIR / f"{study}.json"
    assert load_spec(spec_file(study))


def test_a_bad_spec_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    for spec in (tmp_path / "missing.json", tmp_path / "list.json"):
        with pytest.raises(SystemExit) as exited:
            main(["ggda", "--spec", str(spec)])
        assert exited.value.code == 2
        assert str(spec) in capsys.readouterr().err


def test_spec_templates_and_quick_variants() -> None:
    spec = {"members": 10, "quick": {"members": 3}, "rows": [{"label": "trak-{members}", "n": "{members}"}]}
    assert variant(spec, quick=False) == {"members": 10, "rows": spec["rows"]}
    assert fill(spec["rows"], variant(spec, quick=True)) == [{"label": "trak-3", "n": 3}]


def test_the_report_renders_every_shipped_result(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(RESULTS.glob("*.json"))
    assert main(["report", *map(str, files)]) == 0
    out = capsys.readouterr().out
    for path in files:
        document = json.loads(path.read_text())
        assert markdown(document) in out
        assert kind(document) == ("checks" if path.name.startswith("check_overhead") else "setting")
    # the benchmarks README's mnist-lr table comes from the shipped result, unchanged
    section = (RESULTS.parent / "README.md").read_text().split("## mnist-lr: every registered method")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) >= 17 and all(row in out for row in rows)
    with pytest.raises(ValueError, match="not a result of attrkit bench"):
        kind({"something": 1})
