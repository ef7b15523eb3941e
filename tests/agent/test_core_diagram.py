"""The committed state diagram is generated from the current transition table."""

from __future__ import annotations

from pathlib import Path

from dbfence.agent import diagram
from dbfence.agent.state import TRANSITIONS, Role


def test_committed_state_diagram_is_current() -> None:
    assert diagram.DEFAULT_PATH.read_text(encoding="utf-8") == diagram.render(), (
        "docs/state-diagram.md is stale: run `python -m dbfence.agent.diagram`"
    )


def test_diagram_names_every_state_and_transition() -> None:
    text = diagram.render()
    for role in Role:
        assert f"| `{role.name}` |" in text
    for entry in TRANSITIONS:
        assert f"{entry.source.name} --> {entry.target.name}: {entry.trigger.value}" in text


def test_check_mode(tmp_path: Path) -> None:
    target = tmp_path / "state-diagram.md"
    assert diagram.main(["--check", "--path", str(target)]) == 1
    assert diagram.main(["--path", str(target)]) == 0
    assert diagram.main(["--check", "--path", str(target)]) == 0
    target.write_text("stale", encoding="utf-8")
    assert diagram.main(["--check", "--path", str(target)]) == 1
