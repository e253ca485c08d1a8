"""Every README.md and docs/loader.md block marked ``<!-- test-snippet -->`` runs, in order, as written.

A page's blocks share one working directory holding ``data/c10`` and ``data/cifar10`` (the shipped
CIFAR-10 sample, converted). ``python`` blocks are executed; ``<!-- test-snippet file=NAME -->``
blocks are written to ``NAME`` (importable); ``bash`` blocks are ``fasttarget`` commands, run in this
process with flags that keep them short appended (the last occurrence of an option wins).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SNIPPET = re.compile(r"<!-- test-snippet(?: file=(?P<file>\S+))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.S)
# Appended to each documented command: a few steps on a 20-image-per-class subset, on the CPU.
QUICK = {
    "train": ["--steps", "4", "--eval-every", "2", "--ipc", "20", "--batch-size", "32", "--device", "cpu",
              "--no-progress"],
    "cache": ["--device", "cpu"],
}


def snippets(page: str) -> list[re.Match]:
    return list(SNIPPET.finditer((ROOT / page).read_text()))


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    return [shlex.split(line, comments=True) for line in code.replace("\\\n", " ").splitlines() if line.strip()]


def quick(argv: list[str]) -> list[str]:
    """``argv`` shortened: QUICK's flags appended; a documented ``--steps N`` becomes ``N // 250``
    (at least 2), so that documented counts keep their order (an extension stays an extension)."""
    extra = list(QUICK.get(argv[0], []))
    if "--steps" in argv:
        extra[1] = str(max(2, int(argv[argv.index("--steps") + 1]) // 250))
    return argv + extra


@pytest.mark.parametrize("page", ["README.md", "docs/loader.md"])
def test_documented_snippets_run(page, small_sample_dir, tmp_path, monkeypatch, run_cli, one_thread):
    found = snippets(page)
    assert found, f"{page} marks no test-snippet"
    (tmp_path / "data").mkdir()
    for name in ("c10", "cifar10"):
        (tmp_path / "data" / name).symlink_to(small_sample_dir)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    for match in found:
        code, lang, file = match["code"], match["lang"], match["file"]
        where = f"{page}: snippet at offset {match.start()}"
        if file:
            (tmp_path / file).write_text(code)
        elif lang == "python":
            exec(compile(code, where, "exec"), {"__name__": "__snippet__"})
        elif lang == "bash":
            for argv in commands(code):
                assert argv[0] == "fasttarget", f"{where}: only fasttarget commands run here, got {argv[0]}"
                status, _, err = run_cli(*quick(argv[1:]))
                assert status == 0, f"{where}: {shlex.join(argv)} failed: {err}"
        else:
            pytest.fail(f"{where}: no runner for {lang} blocks")


def test_the_commands_a_user_copies_are_marked():
    """The torchvision teacher, the custom student and the unpacking loop are among the tested blocks."""
    for page in ("README.md", "docs/loader.md"):
        tested = "".join(m["code"] for m in snippets(page))
        assert "for step, (images, targets) in" in tested, page
    readme = "".join(m["code"] for m in snippets("README.md"))
    assert "--teacher torchvision:resnet18@32=" in readme and "--student mynets:small_cnn" in readme
    assert "--resume" in readme
