"""Shell completion (issue #20): ``pinfs completion bash|zsh`` loaded into a real bash and zsh.

Each test loads the printed script as a user's start-up file would, then runs the completion function
the script registered, the way the shell does on TAB (bash: ``COMP_LINE``/``COMP_POINT`` and
``COMPREPLY``; zsh: ``BUFFER``/``CURSOR``/``words``, with ``_describe``, the part of zsh's completion
system that shows the matches, replaced by one that prints them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_backend, run_pinfs
from mounting import mounted, needs_fuse

BASH = """\
source <(pinfs completion bash) || exit 9
complete -p pinfs
COMP_LINE="$LINE"; COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
_python_argcomplete pinfs
printf '%s\\n' "${COMPREPLY[@]}"
"""

ZSH = """\
autoload -Uz compinit && compinit -u -D
source <(pinfs completion zsh) || exit 9
print -r -- "registered: $_comps[pinfs]"
_describe() { print -rl -- "${(@P)2}" }
BUFFER="$LINE"; CURSOR=${#BUFFER}; words=(${(z)BUFFER})
[[ $BUFFER == *" " ]] && words+=("")
_python_argcomplete
"""


@pytest.fixture
def backends(root: Path) -> Path:
    for name in ("s3-main", "sshfs-archive", "local-fs"):
        make_backend(root, name)
    return root


def environment(root: Path) -> dict[str, str]:
    # The script runs 'pinfs' on each TAB: this venv's, found on PATH as after installing it.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "PINFS_ROOT": str(root)}


def complete(shell: str, root: Path, line: str) -> list[str]:
    """What TAB at the end of ``line`` offers (one entry per match)."""
    command = ["bash", "-c", BASH] if shell == "bash" else ["zsh", "-f", "-c", ZSH]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**environment(root), "LINE": line}, timeout=60
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout.splitlines()
    if shell == "bash":
        assert output[0] == "complete -o bashdefault -o default -o nospace -F _python_argcomplete pinfs"
        return [word.strip() for word in output[1:]]
    assert output[0] == "registered: _python_argcomplete"
    return [entry.split(":", 1)[0] for entry in output[1:]]  # zsh shows "match:description"


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_subcommands(backends: Path, shell: str) -> None:
    offered = complete(shell, backends, "pinfs ")
    for command in ("migrate", "pin", "find", "status", "insights", "query", "mount", "umount", "completion"):
        assert command in offered
    assert "--help" not in offered  # options once a "-" is typed


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_backend_names_of_the_data_root(backends: Path, shell: str) -> None:
    assert complete(shell, backends, "pinfs pin ls --backend ") == ["local-fs", "s3-main", "sshfs-archive"]
    assert complete(shell, backends, "pinfs sync --backend s") == ["s3-main", "sshfs-archive"]
    assert complete(shell, backends, "pinfs migrate --backend-filter l") == ["local-fs"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_backend_names_follow_root_on_the_line(backends: Path, tmp_path: Path, shell: str) -> None:
    other = tmp_path / "other-root"
    make_backend(other, "only-here")
    assert complete(shell, backends, f"pinfs verify --root {other} --backend ") == ["only-here"]


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_statuses_and_flags(backends: Path, shell: str) -> None:
    assert complete(shell, backends, "pinfs pin ls --status ") == ["stored", "pending", "failed"]
    assert complete(shell, backends, "pinfs sync --dr") == ["--dry-run"]
    assert complete(shell, backends, "pinfs completion ") == ["bash", "zsh"]


@pytest.mark.mount
@needs_fuse
def test_umount_offers_the_pinfs_mounts(backends: Path, tmp_path: Path) -> None:
    with mounted(backends, tmp_path / "pins") as mount:
        assert complete("bash", backends, f"pinfs umount {tmp_path}/") == [str(mount.mountpoint)]


def test_the_script_as_json_and_a_shell_not_supported(root: Path) -> None:
    report = json.loads(run_pinfs(root, "completion", "zsh", "--json", check=True).stdout)
    assert report["shell"] == "zsh" and report["script"].startswith("#compdef pinfs")
    result = run_pinfs(root, "completion", "fish")
    assert result.returncode == 2 and "invalid choice: 'fish'" in result.stderr
