"""Say what happened (issue #16, items 2-7): rejected control writes recorded and explained, advice
that leads somewhere, dry runs that tell the truth, one exit-code rule with JSON errors, help for
everything, and the small things people hit. Each test asserts what a user sees."""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import break_store, cid_for, make_backend, run_pinfs, run_pinfs_json
from mounting import REJECTIONS, mounted, needs_fuse, sh
from s3server import fs_config

from pinfs.cli import build_parser, main, sync_cmd
from pinfs.errors import InvalidInput
from pinfs.fs.control import ControlRegistry

CID = cid_for("a pin")


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process: (exit status, stdout, stderr)."""
    code = main([*args, "--root", str(root)])
    out, err = capsys.readouterr()
    return code, out, err


# -- 2. a rejected control-file write says why --


@pytest.mark.parametrize(
    ("key", "written", "error"),
    [
        ((None, "migrate"), b"dryrun", "line 1: unknown word 'dryrun' (did you mean 'dry-run'?)"),
        (
            ("local-fs", "pin"),
            f"{CID} stauts=pending\n".encode(),
            "line 1: unknown word 'stauts=pending' (did you mean 'status=pending'?)",
        ),
        (
            (None, "sync"),
            b"backend=local_fs",
            "line 1: backend=local_fs: no backend 'local_fs' under {root}/backends (did you mean 'local-fs'?)",
        ),
    ],
    ids=["typo", "pin-typo", "backend-typo"],
)
def test_a_rejected_write_is_recorded_in_the_files_json_and_logged(
    root: Path, caplog: pytest.LogCaptureFixture, key: Any, written: bytes, error: str
) -> None:
    make_backend(root, "local-fs")
    registry = ControlRegistry(root)
    with caplog.at_level(logging.WARNING), pytest.raises(InvalidInput) as caught:
        registry.parse(key, written)
    expected = error.format(root=root)
    assert str(caught.value) == expected
    state = json.loads(registry.get(key).describe())
    assert (state["state"], state["error"], state["args"], state["result"]) == ("rejected", expected, None, None)
    assert state["at"] is not None
    assert [record.getMessage().endswith(f"rejected: {expected}") for record in caplog.records] == [True]


def test_a_line_rejected_as_it_arrives_is_recorded_too(root: Path) -> None:
    registry = ControlRegistry(root)
    with pytest.raises(InvalidInput):
        registry.check_partial((None, "verify"), b"older-than=soon\n", 0)
    state = json.loads(registry.get((None, "verify")).describe())
    assert (state["state"], state["error"]) == ("rejected", "line 1: older-than='soon': expected a number of days")


@needs_fuse
@pytest.mark.mount
def test_append_works_like_truncate_and_a_rejection_at_close_shows_in_the_json(root: Path, tmp_path: Path) -> None:
    make_backend(root, "local-fs")
    with mounted(root, tmp_path / "m", expected_log=REJECTIONS) as mount:
        control = mount.path(".control", "sync")
        assert sh(f"echo dry-run >> {control}").returncode == 0
        state = json.loads(control.read_text())
        assert (state["state"], state["args"]) == ("succeeded", {"backends": [], "dry_run": True})
        assert sh(f"echo dry-run | tee -a {control} >/dev/null").returncode == 0
        # bash's built-in printf ignores the failed close: the JSON is where the user sees it
        printed = subprocess.run(["bash", "-c", f"printf dryrun > {control}"], capture_output=True, text=True)
        assert printed.returncode == 0
        state = json.loads(control.read_text())
        assert (state["state"], state["error"]) == (
            "rejected",
            "line 1: unknown word 'dryrun' (did you mean 'dry-run'?)",
        )


# -- 3. advice that leads somewhere --


def test_health_says_where_content_is_looked_for_when_no_copy_exists(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs", fs_config("fs", tmp_path / "store"))
    run_pinfs(root, "pin", "add", CID, "--backend", "fs", check=True)
    synced = run_pinfs(root, "sync")
    assert synced.returncode == 1
    assert f"  FAILED {CID}: no copy of its content CAR found: looked for {root}/cars/<cid>.car and in every" in (
        synced.stdout
    )
    health = run_pinfs(root, "health")
    assert health.returncode == 0
    assert health.stdout.splitlines()[1:3] == [
        "fs (filesystem): degraded",
        f"  - 1 failed pin: no copy of their content CAR was found: sync looks for {root}/cars/<cid>.car and in "
        "every other backend holding the CID as stored; put each CAR there (e.g. 'ipfs dag export <cid>'), "
        "then sync this backend again",
    ]


def test_a_failed_migrate_names_the_broken_backends_and_skip_backend_goes_on(root: Path) -> None:
    make_backend(root, "good", pins_json=[CID])
    (make_backend(root, "bad") / "pins.json").write_text("[")
    result = run_pinfs(root, "migrate")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "FAILED (migrate): bad failed (see above); the other backend went through. Fix what is said above and "
        "run this again, or leave them out: pinfs migrate --skip-backend bad (or pick backends with "
        "--backend-filter NAME)"
    )
    again = run_pinfs(root, "migrate", "--skip-backend", "bad")
    assert (again.returncode, again.stdout.splitlines()[-1]) == (0, "ok (migrate)")


def test_skip_backend_is_a_word_of_the_migrate_control_file(root: Path) -> None:
    make_backend(root, "good", pins_json=[CID])
    (make_backend(root, "bad") / "pins.json").write_text("[")
    report = ControlRegistry(root).parse((None, "migrate"), b"skip-backend=bad").run()
    assert (report["ok"], [entry["backend"] for entry in report["backends"]], report["skipped"]) == (
        True,
        ["good"],
        ["bad"],
    )


def test_sync_text_says_how_many_failed_lines_it_left_out(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_cmd, "TEXT_DETAILS", 2)
    make_backend(root, "fs", fs_config("fs", tmp_path / "store"))
    cids = [cid_for(index) for index in range(5)]
    assert cli(capsys, root, "pin", "add", *cids, "--backend", "fs")[0] == 0
    code, out, _err = cli(capsys, root, "sync")
    lines = out.splitlines()
    assert code == 1
    assert len([line for line in lines if line.startswith("  FAILED ")]) == 2
    assert "  … and 3 more (use --json)" in lines
    code, out, _err = cli(capsys, root, "sync", "--json")
    assert len(json.loads(out)["backends"][0]["failed"]) == 5


# -- 4. dry runs tell the truth --


def test_a_dry_run_says_what_it_would_write_and_writes_nothing(root: Path) -> None:
    directory = make_backend(root, "b1", pins_json=[CID, "not-a-cid", {"cid": 5}])
    text = run_pinfs(root, "migrate", "--dry-run", "--verbose")
    assert text.stdout.splitlines()[0] == (
        "[dry run] b1: 1 added, 0 updated, 0 unchanged, 2 rejected (would be kept in pins.rejected.json); "
        "1 pins; CAR would be written (pins changed)"
    )
    assert '  rejected pins.json: entry 1 "not-a-cid": invalid CID' in text.stdout
    assert '  rejected pins.json: entry 2 {"cid": 5}: ' in text.stdout
    entry = run_pinfs_json(root, "migrate", "--dry-run")["backends"][0]
    assert (entry["parquet_written"], entry["car_written"], entry["backup"]) == (False, False, False)
    assert entry["would_write"] == {"backup": True, "parquet": True, "car": True, "rejected": True}
    assert sorted(path.name for path in directory.iterdir()) == ["pins.json"]


def test_a_restore_dry_run_names_the_pins_it_would_drop(root: Path) -> None:
    kept, dropped = cid_for("kept"), cid_for("dropped")
    make_backend(root, "b1", pins_json=[kept])
    run_pinfs(root, "migrate", check=True)
    run_pinfs(root, "pin", "add", dropped, "--backend", "b1", check=True)
    result = run_pinfs(root, "migrate", "--restore-from-backup", "--dry-run")
    first, second = result.stdout.splitlines()[:2]
    assert first.startswith("[dry run] b1: would restore 1 pins from ")
    assert "; would drop 1 pin not in it, would add 0; the current pins would be kept as " in first
    assert second == f"  would drop {dropped}"
    entry = run_pinfs_json(root, "migrate", "--restore-from-backup", "--dry-run")["backends"][0]
    assert (entry["would_drop"], entry["would_drop_count"], entry["would_add_count"]) == ([dropped], 1, 0)


# -- 5. one exit-code rule, and JSON errors --


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with a good backend, one whose pins cannot be read, and one still on a pins.json that is
    not JSON; shared by the error-class cases, which all fail before changing anything."""
    from pinfs.ops.pins import PinRequest, add_pins

    root = tmp_path_factory.mktemp("troubled") / "ipfs_kit"
    for name in ("b1", "broken"):
        make_backend(root, name)
        add_pins(root, name, [PinRequest(CID)])
    break_store(root / "backends" / "broken")
    make_backend(root, "badlog")
    add_pins(root, "badlog", [PinRequest(CID)])
    (root / "backends" / "badlog" / "pin_mappings.delta" / "_delta_log" / f"{0:020d}.json").write_text("{[")
    (make_backend(root, "legacy") / "pins.json").write_text("[")
    (root / "garbage.car").write_bytes(b"not a CAR at all")
    (root / "full").mkdir()
    (root / "full" / "file").write_text("x")
    return root


BAD = "not-a-cid"
# (command words, error class, arguments after them, exit status): every subcommand, in every class of
# error it can meet. usage: the command line itself is wrong; invalid: a value is malformed; unknown: a
# backend that does not exist; failed: the operation was tried and failed.
ERROR_CASES = [
    *[
        (words, "usage", ["--no-such-option"], 2)
        for words in [
            ("migrate",),
            ("pin", "add"),
            ("pin", "rm"),
            ("pin", "ls"),
            ("pin", "get"),
            ("find",),
            ("car", "show"),
            ("car", "regenerate"),
            ("sync",),
            ("verify",),
            ("health",),
            ("status",),
            ("insights",),
            ("maintain",),
            ("query",),
            ("mount",),
            ("umount",),
            ("completion",),
            ("backend",),
            ("daemon",),
            ("pin",),
            ("car",),
        ]
    ],
    (("migrate",), "invalid", ["--backend-filter", "a/b"], 2),
    (("migrate",), "unknown", ["--skip-backend", "nosuch"], 2),
    (("migrate",), "failed", ["--backend-filter", "legacy"], 1),
    (("pin", "add"), "invalid", [BAD, "--backend", "b1"], 2),
    (("pin", "add"), "unknown", [CID, "--backend", "b2"], 2),
    (("pin", "add"), "failed", [CID, "--backend", "broken"], 1),
    (("pin", "rm"), "invalid", [BAD, "--backend", "b1"], 2),
    (("pin", "rm"), "unknown", [CID, "--backend", "nosuch"], 2),
    (("pin", "rm"), "failed", [cid_for("absent"), "--backend", "b1"], 1),
    (("pin", "ls"), "invalid", ["--backend", "A/B"], 2),
    (("pin", "ls"), "unknown", ["--backend", "nosuch"], 2),
    (("pin", "ls"), "failed", ["--backend", "broken"], 1),
    (("pin", "get"), "invalid", [BAD], 2),
    (("pin", "get"), "unknown", [CID, "--backend", "nosuch"], 2),
    (("pin", "get"), "failed", [cid_for("absent")], 1),
    (("find",), "invalid", [BAD], 2),
    (("find",), "failed", [cid_for("absent")], 1),
    (("car", "show"), "failed", ["{root}/garbage.car"], 1),
    (("car", "regenerate"), "invalid", ["--backend", "A/B"], 2),
    (("car", "regenerate"), "unknown", ["--backend", "nosuch"], 2),
    (("car", "regenerate"), "failed", ["--backend", "broken"], 1),
    (("sync",), "invalid", ["--backend", "A/B"], 2),
    (("sync",), "unknown", ["--backend", "nosuch"], 2),
    (("sync",), "failed", ["--backend", "broken"], 1),
    (("verify",), "invalid", ["--older-than", "-1"], 2),
    (("verify",), "unknown", ["--backend", "nosuch"], 2),
    (("verify",), "failed", ["--backend", "broken"], 1),
    (("health",), "failed", [], 1),
    (("status",), "failed", [], 1),
    (("insights",), "failed", [], 1),
    (("maintain",), "invalid", ["--retention-hours", "soon"], 2),
    (("maintain",), "unknown", ["--backend", "nosuch"], 2),
    (("maintain",), "failed", ["--backend", "badlog"], 1),
    (("query",), "invalid", ["SELEC nothing"], 2),
    (("query",), "failed", ["SELECT count(*) FROM pins"], 1),
    (("mount",), "invalid", ["{root}/full"], 2),
    (("mount",), "failed", ["{root}/full", "--nonempty", "--root", "{root}/no-such-root"], 1),
    (("umount",), "failed", ["{root}/full"], 1),
    (("completion",), "invalid", ["fish"], 2),
]


def _case_id(case: tuple[Any, ...]) -> str:
    return f"{' '.join(case[0])}-{case[1]}"


@pytest.mark.parametrize(("words", "kind", "rest", "code"), ERROR_CASES, ids=[_case_id(c) for c in ERROR_CASES])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_every_subcommand_in_every_error_class(
    troubled: Path,
    capsys: pytest.CaptureFixture[str],
    words: tuple[str, ...],
    kind: str,
    rest: list[str],
    code: int,
    as_json: bool,
) -> None:
    argv = [*words, *(word.format(root=troubled) for word in rest), *(["--json"] if as_json else [])]
    if "--root" not in argv:
        argv += ["--root", str(troubled)]
    status = main(argv)
    out, err = capsys.readouterr()
    assert status == code, (argv, out, err)
    assert "Traceback" not in err
    command = " ".join(words)
    errors = [line for line in err.splitlines() if ": error: " in line]
    reports_failure = kind == "failed" and not errors  # a report that says what failed, exit 1
    if not reports_failure:
        assert len(errors) == 1 and errors[0].startswith(f"pinfs {command}: error: "), err
    if kind == "usage":
        assert err.startswith("usage: pinfs " + command)
    if not as_json:
        assert reports_failure or not out.strip() or words == ("pin", "ls")
        return
    last = json.loads(out.strip().splitlines()[-1]) if words == ("pin", "ls") else json.loads(out)
    if reports_failure and words == ("query",):  # the rows it could read, and a line per backend left out
        assert isinstance(last, list) and "warning: backend broken left out" in err
    elif reports_failure:
        assert last["ok"] is False
    else:
        assert (last["error"], last["code"], last["command"]) == (errors[0].split(": error: ", 1)[1], code, command)


def test_health_status_and_insights_exit_alike(root: Path, tmp_path: Path) -> None:
    make_backend(root, "fs", fs_config("fs", tmp_path / "store"))
    run_pinfs(root, "pin", "add", CID, "--backend", "fs", "--status", "failed", check=True)
    codes = [run_pinfs(root, command).returncode for command in ("health", "status", "insights")]
    assert codes == [0, 0, 0]  # degraded is not a failure
    make_backend(root, "broken")
    run_pinfs(root, "pin", "add", CID, "--backend", "broken", check=True)
    break_store(root / "backends" / "broken")
    codes = [run_pinfs(root, command).returncode for command in ("health", "status", "insights")]
    assert codes == [1, 1, 1]


# -- 6. help that helps --


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.extend(_parsers(sub, (*path, name)))
    return found


@pytest.mark.parametrize(
    ("path", "parser"), _parsers(build_parser()), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_subcommand_and_option_has_a_sentence_of_help(path: tuple[str, ...], parser: Any) -> None:
    assert parser.description and len(parser.description) >= 60, path
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._VersionAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            assert all(choice.help for choice in action._choices_actions), path
            continue
        assert action.help and len(action.help) >= 12, (path, action.dest)


@pytest.mark.parametrize("words", [["backend"], ["daemon"], ["daemon", "intelligent"]])
def test_the_seed_spellings_have_help(capsys: pytest.CaptureFixture[str], words: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*words, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pinfs " + " ".join(words)) and "is 'pinfs " in " ".join(out.split())


def test_mount_help_and_a_non_empty_mount_point(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["mount", "--help"])
    assert "--nonempty" in capsys.readouterr().out
    (root / "m").mkdir()
    (root / "m" / "notes.txt").write_text("mine")
    code, _out, err = cli(capsys, root, "mount", str(root / "m"))
    assert code == 2
    assert err == (
        f"pinfs mount: error: mount point {root}/m is not empty: mounting would hide what is in it; use an empty "
        "directory, or give --nonempty (-o nonempty) to mount over it anyway\n"
    )


def test_two_configs_that_disagree_are_a_conflict(root: Path) -> None:
    make_backend(root, "s3-main", {"name": "s3-main", "type": "s3", "bucket": "one"})
    (root / "backend_configs").mkdir()
    (root / "backend_configs" / "s3-main.yaml").write_text("name: s3-main\ntype: s3\nbucket: two\n")
    health = run_pinfs(root, "health")
    assert health.returncode == 1
    assert health.stdout.splitlines()[2] == (
        f"  - conflicting configs: {root}/backends/s3-main.yaml and {root}/backend_configs/s3-main.yaml both "
        "configure this backend and disagree; remove one, or make them the same"
    )
    (root / "backend_configs" / "s3-main.yaml").write_text("name: s3-main\ntype: s3\nbucket: one\n")
    assert "conflicting" not in run_pinfs(root, "health").stdout


def test_an_invalid_backend_directory_is_warned_about_once_per_command(root: Path) -> None:
    make_backend(root, "b1")
    run_pinfs(root, "pin", "add", *[cid_for(index) for index in range(3)], "--backend", "b1", check=True)
    (root / "backends" / "Bad Name").mkdir()
    listed = run_pinfs(root, "pin", "ls")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 3
    assert (
        listed.stderr == f"pinfs pin ls: warning: {root}/backends/Bad Name: invalid backend name 'Bad Name'; ignored\n"
    )


# -- 7. small things people hit --


@needs_fuse
@pytest.mark.mount
def test_umount_of_a_busy_mount_says_what_holds_it(root: Path, tmp_path: Path) -> None:
    make_backend(root, "b1")
    with mounted(root, tmp_path / "m") as mount:
        holder = subprocess.Popen(["sleep", "60"], cwd=mount.path("backends"))
        try:
            result = run_pinfs(root, "umount", str(mount.mountpoint))
        finally:
            holder.kill()
            holder.wait()
        assert result.returncode == 1
        assert result.stderr == (
            f"pinfs umount: error: could not unmount {mount.mountpoint}: it is busy, in use by pid {holder.pid} "
            f"(sleep: working directory); leave it (cd elsewhere, close those programs), then run "
            f"'pinfs umount {mount.mountpoint}' again\n"
        )


def test_health_reports_an_unreachable_s3_endpoint(root: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    make_backend(
        root, "s3-main", {"name": "s3-main", "type": "s3", "bucket": "b", "endpoint": f"http://127.0.0.1:{port}"}
    )
    health = run_pinfs_json(root, "health")
    entry = health["backends"][0]
    assert entry["state"] == "degraded"
    assert [reason for reason in entry["reasons"] if "unreachable" in reason] == [
        f"storage: unreachable: s3://b at http://127.0.0.1:{port}: cannot connect to 127.0.0.1:{port} "
        f"([Errno 111] Connection refused) (sync and verify of s3-main fail until it answers)"
    ]


def test_mount_directories_are_0755_so_a_copy_can_be_removed(root: Path) -> None:
    from pinfs.data.snapshots import StoreCache
    from pinfs.fs.tree import NodeKind, PinTree

    make_backend(root, "b1")
    node = PinTree(root, StoreCache()).resolve(("backends", "b1"))
    assert node.kind is NodeKind.DIRECTORY and node.mode & 0o777 == 0o755
