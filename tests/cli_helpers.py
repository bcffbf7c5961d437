"""Running `laid` in-process in tests and checking that a refusal is one line."""

from __future__ import annotations

from laid_workflows.cli import main


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run `laid argv`; it must exit 1 with one stderr line (no traceback) holding every needle."""
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err
