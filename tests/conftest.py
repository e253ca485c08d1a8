"""Running the CLI in tests, and the table of every bad input the tests try.

Every test that feeds the command line a bad input goes through :func:`user_error` (in-process)
or :func:`record_bad_input` (a subprocess it ran itself). Both assert the CLI's contract for
mistakes a user can fix — exit code 2, one line on stderr that starts with ``error:``, no
traceback — and record what was tried and the line it got. Tests of the library API provoke
:class:`~fasttarget.errors.UserError` directly (``pytest.raises``); every such error raised in
a test is recorded too, under the test's name. ``pytest --bad-inputs-table FILE`` writes both as
Markdown (``docs/bad-inputs.md`` is made that way), so the table lists exactly what the tests
try, with the messages they saw.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_RECORDS = pytest.StashKey[list]()
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BadInput:
    """One bad input a test tried: what it was, the command, and the one line it got."""

    test: str
    what: str
    command: str
    message: str


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bad-inputs-table", metavar="FILE", default=None,
                     help="write the bad inputs the tests tried, and the messages they got, as Markdown")


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_RECORDS] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--bad-inputs-table")
    if path:
        Path(path).write_text(render_table(session.config.stash[_RECORDS]))


def render_table(records: list[BadInput]) -> str:
    """The Markdown table of ``records``, one row per distinct (what, command), grouped by test file.

    A library-level record (no command) whose message a command-line record already shows is left out.
    """
    on_cli = {r.message for r in records if r.command}
    rows = {(r.test.split("::")[0], r.what, r.command): r.message for r in records
            if r.command or r.message not in on_cli}
    lines = [
        "# Bad inputs and what fasttarget says",
        "",
        "Every mistake a user can fix ends in exit code 2 and one line on stderr, never a traceback.",
        "This table is written by the tests that check it (`tests/conftest.py`), so it lists exactly",
        "what they try; paths under the test's temporary folder are shown as `<tmp>`. Regenerate with",
        "",
        "```bash",
        ".venv/bin/python -m pytest tests --bad-inputs-table docs/bad-inputs.md",
        "```",
        "",
        "A row without a command is a library call (`UserError` raised to the caller; the CLI prints",
        "the same text after `error: `), named by the test that makes it.",
        "",
        "| test file | bad input | command | message |",
        "|---|---|---|---|",
    ]
    for (file, what, command), message in sorted(rows.items()):
        shown = f"`{_cell(command)}`" if command else ""
        lines.append(f"| `{file}` | {_cell(what)} | {shown} | {_cell(message)} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _relative(text: str, basetemp: Path) -> str:
    """``text`` with pytest's temporary folders (``BASETEMP/NAME<n>``) shown as ``<tmp>`` and the checkout as
    ``<repo>`` and process ids as ``N``: the same every run, on every machine."""
    text = text.replace(str(basetemp), "<tmp>").replace(str(_REPO), "<repo>")
    text = re.sub(r"\(pid \d+\)", "(pid N)", text)
    return re.sub(r"<tmp>/[\w.-]+?\d+(?=[/\s'\"`:,)]|$)", "<tmp>", text)


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Assert the CLI contract for a user's mistake and return the message (without ``error: ``)."""
    lines = err.strip().splitlines()
    assert code == 2, f"exit code {code}, stderr:\n{err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0].removeprefix("error: ")


@pytest.fixture(autouse=True)
def _record_user_errors(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch):
    """Record every :class:`UserError` a test provokes, for the bad-inputs table.

    Only when the table is asked for: otherwise no test pays for it.
    """
    if not request.config.getoption("--bad-inputs-table"):
        return
    from fasttarget.errors import UserError

    original = UserError.__init__
    records = request.config.stash[_RECORDS]
    what = request.node.name.removeprefix("test_").replace("_", " ")

    def recording_init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        message = _relative(str(self), tmp_path_factory.getbasetemp())
        records.append(BadInput(request.node.nodeid, what, "", message))

    monkeypatch.setattr(UserError, "__init__", recording_init)


@pytest.fixture
def record_bad_input(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """``record_bad_input(what, argv, code, stderr, *fragments)``: check and record a subprocess's error.

    For bad inputs a test must try from its own process (a second writer holding a lock, a console
    script run for real): pass the argv it ran, its exit code and stderr.
    """

    def record(what: str, argv: list[str], code: int, err: str, *fragments: str) -> str:
        message = assert_one_line_error(code, err, *fragments)
        command = shlex.join(["fasttarget", *map(str, argv)])
        base = tmp_path_factory.getbasetemp()
        request.config.stash[_RECORDS].append(
            BadInput(request.node.nodeid, what, _relative(command, base), _relative(message, base)))
        return message

    return record


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """``run_cli(*args) -> (exit code, stdout, stderr)``: the ``fasttarget`` entry point, in-process."""
    from fasttarget.cli import main

    def run(*args) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["fasttarget", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exit_info:
            code = exit_info.code or 0
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def user_error(run_cli, record_bad_input):
    """``user_error(what, *args, expect=fragment(s)) -> message``: run a bad command, check, record it.

    Example::

        def test_negative_lr(user_error, sample_dir, tmp_path):
            user_error("negative learning rate", "train", "--data", sample_dir, "--lr", "-1",
                       "--out", tmp_path / "run", expect=("--lr",))
    """

    def run(what: str, *args, expect: str | tuple[str, ...] = ()) -> str:
        code, _, err = run_cli(*args)
        fragments = (expect,) if isinstance(expect, str) else expect
        return record_bad_input(what, list(args), code, err, *fragments)

    return run


@pytest.fixture
def kill_and_resume(tmp_path: Path):
    """``kill_and_resume(args, watch="", rows=3) -> (killed, straight)``: run ``fasttarget ARGS --out
    killed``, SIGKILL it once ``killed/WATCH/metrics.jsonl`` holds ``rows`` evaluations, resume it with
    ``--resume``, and run the same command uninterrupted into ``straight``, both to the end.

    Both run with one intra-op thread: identical float reductions, and no OpenMP spinning on a
    busy machine. Choose ``rows`` past the first checkpoint, so the resumed run must drop and redo
    the evaluations written after it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [str(Path(sys.executable).with_name("fasttarget"))]

    def start(args: list, out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([*command, *map(str, args), "--out", out, *extra], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def run(args: list, watch: str = "", rows: int = 3) -> tuple[Path, Path]:
        killed, straight = tmp_path / "killed", tmp_path / "straight"
        proc = start(args, killed)
        watched, deadline = killed / watch / "metrics.jsonl", time.monotonic() + 600
        while not watched.is_file() or watched.read_text().count("\n") < rows:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (killed / watch / "final.json").exists()
        for proc in (start(args, killed, "--resume"), start(args, straight)):
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err
        return killed, straight

    return run
