"""Control files: writing a line to ``.control/<command>`` runs an operation (CONTRACT §2).

What it is for: a table of small command objects, one per control file name. Each one parses the
written text into the same options dataclass the CLI builds (``pinfs.ops.*``) and runs the same
operation function; ``ControlFile`` keeps the state of one control file (idle, running, succeeded,
failed, or rejected: input refused, with why) and describes its last run as JSON.

What it must not do: import pyfuse3 or the tree, do any work of the operations itself, or act on
input that is not entirely valid. ``Command.parse`` validates everything (words, values, backend
names, CIDs, UTF-8, line length) and raises ``InvalidInput`` before anything runs; the registry
records every such rejection in the file's state and logs it (issue #16), wherever it is found.

Threading: ``parse`` and ``ControlFile.run`` block (they touch disk) and run on worker threads.
``ControlFile.start`` and ``describe`` are cheap and may be called from the event loop; its state is
guarded by a lock because the run finishes on a worker thread.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pinfs import commands as declared
from pinfs.commands import BACKEND_COMMANDS, MAX_LINE_BYTES, ROOT_COMMANDS, Command, Option
from pinfs.data.backends import Backend
from pinfs.data.rootfs import as_path
from pinfs.data.schema import now_iso
from pinfs.errors import Busy, InvalidInput, NotFound, PinfsError, describe
from pinfs.fs.holders import held_elsewhere

log = logging.getLogger(__name__)

# CONTRACT §2: a command line is at most MAX_LINE_BYTES (4 KiB); a pin/unpin batch may have many.
MAX_BATCH_BYTES = 16 << 20

IDLE, RUNNING, SUCCEEDED, FAILED, REJECTED = "idle", "running", "succeeded", "failed", "rejected"


# -- parsed commands --


@dataclass
class Prepared:
    """A fully validated command, ready to run: ``run`` is the operation call, nothing else."""

    command: str
    args: dict[str, Any]
    run: Callable[[], dict[str, Any]]


def decode_input(data: bytes, multiline: bool, first_line: int = 1) -> str:
    """The written bytes as text. Raises InvalidInput for non-UTF-8, a line over 4 KiB (numbered from
    ``first_line``), too much input, or (for one-line commands) more than one line."""
    limit = MAX_BATCH_BYTES if multiline else MAX_LINE_BYTES + 1
    if len(data) > limit:
        raise InvalidInput(f"input is {len(data)} bytes; at most {limit} are accepted")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"input is not UTF-8 (byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, first_line):
        if len(line.encode()) > MAX_LINE_BYTES:
            raise InvalidInput(f"line {number} is longer than {MAX_LINE_BYTES} bytes")
    if not multiline and len(lines) > 1:
        raise InvalidInput("write one line: this control file takes a single command")
    return text


def _value(option: Option, text: str) -> Any:
    """A word's value, parsed by the option's declared parser. Raises InvalidInput saying which word."""
    if option.parse is None:
        return text
    try:
        return option.parse(text)
    except InvalidInput as exc:
        raise InvalidInput(f"line 1: {option.word}={text[:60]!r}: {exc}") from None


def _checked(root: Path, option: Option, text: str) -> str:
    """A ``backend=`` value that names (or, for migrate, selects) a backend that exists."""
    try:
        if option.check is not None:
            option.check(root, text)
    except (InvalidInput, NotFound) as exc:
        raise InvalidInput(f"line 1: {option.word}={text}: {exc}") from None
    return text


# -- the command table --


@dataclass(frozen=True)
class WordsCommand:
    """A command taking one line of words, as ``pinfs.commands`` declares them: flags (``dry-run``),
    ``backend=<name>`` (repeatable, implied in a backend's own ``.control``) and valued words
    (``older-than=<days>``), turned into the operation's options and passed to the operation."""

    declaration: Command
    multiline = False

    @property
    def name(self) -> str:
        return self.declaration.name

    def parse(self, root: Path, backend: str | None, data: bytes) -> Prepared:
        """Validate ``data`` and bind it to the operation. Raises InvalidInput (nothing has run)."""
        words = decode_input(data, multiline=False).split()
        fields: dict[str, Any] = {}
        backends: list[str] = [backend] if backend else []
        for word in words:
            key, has_value, value = word.partition("=")
            option = self.declaration.option(key)
            if option is None or bool(has_value) != (option.metavar is not None):
                raise InvalidInput(f"line 1: unknown word {word[:60]!r}{self._suggestion(word)}")
            if not has_value:
                fields[option.field] = True
            elif key == "backend":
                if backend is not None and value != backend:
                    raise InvalidInput(f"backend={value}: this control file acts on {backend!r} only")
                if value not in backends:
                    backends.append(_checked(root, option, value))
            elif option.repeatable:
                fields.setdefault(option.field, []).append(_value(option, value))
            elif option.field in fields:
                raise InvalidInput(f"line 1: {key}= given twice")
            else:
                fields[option.field] = _value(option, value)
        args = {"backends": backends, **fields}

        assert self.declaration.options_class is not None
        options = self.declaration.options_class(**args)
        return Prepared(self.name, args, lambda: self.declaration.function(root, options))

    def _suggestion(self, word: str) -> str:
        """`` (did you mean 'dry-run'?)`` for a near miss, else the words there are (issue #16)."""
        key, has_value, value = word.partition("=")
        words = [option.word + ("=" if option.metavar else "") for option in self.declaration.options]
        close = difflib.get_close_matches(key + has_value, words, n=1, cutoff=0.6)
        if close:
            return f" (did you mean {close[0] + value if close[0].endswith('=') else close[0]!r}?)"
        return f" ({self.name} takes: {', '.join(word + '<value>' if word.endswith('=') else word for word in words)})"


@dataclass(frozen=True)
class LinesCommand:
    """``pin``/``unpin``: one item per line, parsed by the operation's own line parser, one batch."""

    declaration: Command
    multiline = True

    @property
    def name(self) -> str:
        return self.declaration.name

    def parse_lines(self, text: str, first_line: int = 1) -> list[Any]:
        assert self.declaration.parse_lines is not None
        return self.declaration.parse_lines(text, first_line)

    def parse(
        self,
        root: Path,
        backend: str | None,
        data: bytes,
        defer_car: Callable[[Backend], None] | None = None,
        checked: Checked | None = None,
    ) -> Prepared:
        """Validate ``data`` and bind it to the operation; the lines of ``checked`` (parsed as they were
        written) are not parsed again. Raises InvalidInput (nothing has run)."""
        if backend is None:
            raise InvalidInput(f"{self.name} acts on one backend: use backends/<name>/.control/{self.name}")
        decode_input(data, multiline=True)  # the whole input's limits
        done = checked if checked is not None and checked.upto <= len(data) else Checked()
        items = [*done.items, *self.parse_lines(data[done.upto :].decode("utf-8"), _line_at(data, done.upto))]
        if not items:
            raise InvalidInput(f"{self.name}: no lines given")
        function = self.declaration.function
        return Prepared(
            self.name,
            {"backend": backend, "lines": len(items)},
            lambda: function(root, backend, items, defer_car=defer_car),
        )

    def check_lines(self, data: bytes, first_line: int) -> list[Any]:
        """Validate complete lines as they arrive (the first of ``data`` is line ``first_line`` of the
        input), so a bad one fails the write that brought it; returns what they parse to, which the
        close then need not parse again."""
        text = decode_input(data, multiline=True, first_line=first_line)
        return self.parse_lines(text, first_line) if text.strip() else []


def _line_at(data: bytes, offset: int) -> int:
    """The number of the line starting at byte ``offset`` of ``data`` (a line's start)."""
    return data.count(b"\n", 0, offset) + 1


@dataclass
class Checked:
    """What the writes to one open control file have validated so far: its first ``upto`` bytes (whole
    lines), parsed to ``items`` (a lines command's; none for a one-line command)."""

    upto: int = 0
    items: list[Any] = field(default_factory=list)


ControlCommand = WordsCommand | LinesCommand

# The control files' commands, made from their declarations (pinfs.commands).
COMMANDS: dict[str, ControlCommand] = {
    name: LinesCommand(declaration) if declaration.multiline else WordsCommand(declaration)
    for name, declaration in declared.COMMANDS.items()
}
__all__ = ["BACKEND_COMMANDS", "ROOT_COMMANDS", "COMMANDS", "ControlFile", "ControlRegistry"]


# -- state of one control file --


def failure_summary(report: dict[str, Any]) -> str:
    """One line saying why a report is not ok: its own error, else each failing backend's."""
    if report.get("error"):
        return str(report["error"])
    reasons = []
    for entry in report.get("backends", []):
        if isinstance(entry, dict) and not entry.get("ok", True):
            why = entry.get("error") or "; ".join(map(str, entry.get("problems", [])[:3])) or "failed"
            reasons.append(f"{entry.get('backend')}: {why}")
    return " | ".join(reasons) or "the operation reported a failure; see result"


class ControlFile:
    """One control file: at most one run at a time, and what its last run did."""

    def __init__(self, command: ControlCommand, backend: str | None) -> None:
        self.command = command
        self.backend = backend
        self._lock = threading.Lock()
        self._state = IDLE
        self._args: dict[str, Any] | None = None
        self._started_at: str | None = None
        self._finished_at: str | None = None
        self._result: Any = None
        self._error: str | None = None
        self._at: str | None = None  # when the state was reached

    @property
    def running(self) -> bool:
        with self._lock:
            return self._state == RUNNING

    def check_idle(self) -> None:
        if self.running:
            raise Busy(f"{self.command.name} is already running")

    def start(self, prepared: Prepared) -> None:
        """Mark the file running. Raises Busy when a run is in progress."""
        with self._lock:
            if self._state == RUNNING:
                raise Busy(f"{self.command.name} is already running")
            self._state, self._args = RUNNING, prepared.args
            self._started_at, self._finished_at = now_iso(), None
            self._result = self._error = None
            self._at = self._started_at

    def run(self, prepared: Prepared) -> bool:
        """Run a started command to the end (blocking) and record how it went; True on success."""
        result: Any = None
        error: str | None = None
        try:
            result = prepared.run()
            if isinstance(result, dict) and not result.get("ok", True):
                error = failure_summary(result)
        except PinfsError as exc:
            error = str(exc)
        except OSError as exc:  # a full disk, a read-only root: the real cause, in one line (issue #15)
            error = describe(exc)
            log.warning("control command %s failed: %s", self.command.name, error)
        except Exception as exc:  # recorded in the file's JSON and logged; the mount keeps running
            log.exception("control command %s failed", self.command.name)
            error = f"internal error: {type(exc).__name__}: {exc}"
        with self._lock:
            self._state = FAILED if error else SUCCEEDED
            self._finished_at, self._result, self._error = now_iso(), result, error
            self._at = self._finished_at
        return error is None

    def reject(self, reason: str) -> None:
        """Record input that was refused (nothing ran), so that reading the file says why, even when
        the writer never saw the error (issue #16: bash's ``printf`` ignores a failed close). A run in
        progress keeps its state: the rejection is only logged then."""
        with self._lock:
            if self._state == RUNNING:
                return
            self._state, self._args, self._result, self._error = REJECTED, None, None, reason
            self._started_at = self._finished_at = None
            self._at = now_iso()

    def describe(self) -> bytes:
        """The last run as JSON (CONTRACT §2), pretty, with a final newline."""
        with self._lock:
            report = {
                "command": self.command.name,
                "backend": self.backend,
                "state": self._state,
                "args": self._args,
                "started_at": self._started_at,
                "finished_at": self._finished_at,
                "result": self._result,
                "error": self._error,
                "at": self._at,
            }
        return (json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n").encode()


class ControlRegistry:
    """Every control file of the mount, created on first use, keyed by (backend or None, command)."""

    def __init__(self, root: Path, defer_car: Callable[[Backend], None] | None = None) -> None:
        self.root = as_path(root)
        self.defer_car = defer_car  # pin/unpin leave a big backend's exports to it (the mount's)
        self._files: dict[tuple[str | None, str], ControlFile] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple[str | None, str]) -> ControlFile:
        backend, name = key
        allowed = BACKEND_COMMANDS if backend is not None else ROOT_COMMANDS
        if name not in allowed:
            raise NotFound(f"no control file {name!r}")
        with self._lock:
            found = self._files.get(key)
            if found is None:
                found = self._files[key] = ControlFile(COMMANDS[name], backend)
            return found

    def parse(self, key: tuple[str | None, str], data: bytes, checked: Checked | None = None) -> Prepared:
        """Validate written bytes for the control file ``key`` (``checked``: what ``check_partial`` found
        of them). Raises InvalidInput, recorded as the file's state (``rejected``) and logged."""
        command = COMMANDS[key[1]]
        with self._recording_rejection(key):
            if isinstance(command, LinesCommand):
                return command.parse(self.root, key[0], data, self.defer_car, checked)
            return command.parse(self.root, key[0], data)

    @contextlib.contextmanager
    def _recording_rejection(self, key: tuple[str | None, str]) -> Iterator[None]:
        try:
            yield
        except InvalidInput as exc:
            self.get(key).reject(str(exc))
            where = "/".join(part for part in ("backends", key[0]) if key[0]) or ""
            log.warning("%s.control/%s: rejected: %s", f"{where}/" if where else "", key[1], exc)
            raise

    def check_partial(self, key: tuple[str | None, str], data: bytes, checked: int) -> Checked:
        """Validate what has arrived so far: size, UTF-8 and every complete line after byte ``checked``
        (those before it were checked by an earlier write). Returns how far it is now checked, and what
        the lines after ``checked`` parse to. Raises InvalidInput. A line still incomplete is checked by
        the next write or by ``parse``."""
        with self._recording_rejection(key):
            return self._check_partial(key, data, checked)

    def _check_partial(self, key: tuple[str | None, str], data: bytes, checked: int) -> Checked:
        command = COMMANDS[key[1]]
        complete = data.rfind(b"\n") + 1
        if isinstance(command, LinesCommand):
            if len(data) > MAX_BATCH_BYTES:
                raise InvalidInput(f"input is more than {MAX_BATCH_BYTES} bytes")
            if len(data) - complete > MAX_LINE_BYTES:
                raise InvalidInput(f"a line is longer than {MAX_LINE_BYTES} bytes")
            items = command.check_lines(data[checked:complete], _line_at(data, checked)) if complete > checked else []
            return Checked(max(complete, checked), items)
        if complete or len(data) > MAX_LINE_BYTES:
            command.parse(self.root, key[0], data)
        return Checked(complete)


# -- what one open control file has been written --


class ControlSession:
    """The write state of one open control file (one handle opened for writing): what was written,
    how much of it is checked, whether its command ran or its input was rejected, and who opened it
    (``pinfs.fs.holders``: the command runs at the last close, issue #15).

    Threading: ``accept``, ``checked_up_to``, ``reject`` and ``take`` are called on the event loop;
    ``held_elsewhere`` blocks (it reads /proc) and runs on a worker thread."""

    def __init__(
        self, control: ControlFile, key: tuple[str | None, str], *, inode: int, opener_pid: int, append: bool
    ) -> None:
        self.control = control
        self.key = key
        self.inode = inode  # the control file's inode and the pid that opened it: who else holds it
        self.opener_pid = opener_pid
        self.append = append  # opened with O_APPEND ('>>', 'tee -a'): writes come at the file's size, not 0
        self.buffer = bytearray()
        self.checked = Checked()  # how much of ``buffer`` is validated line by line, and parsed to what
        self.wrote = False  # something was written that has not run yet: the last close runs it
        self.rejected = False  # a write failed validation: nothing runs from this open file
        self.ran = False  # the command of this open file has run: it takes no more input
        self.position = 0  # the open file's offset: where the last write ended

    @property
    def pending(self) -> bool:
        """Whether input is waiting to run (a shell may flush before it writes: then nothing is)."""
        return self.wrote and not self.rejected

    def accept(self, offset: int, data: bytes) -> bytes:
        """Add ``data`` written at ``offset``; returns everything written so far, to check. Raises
        InvalidInput (out of order, after a rejection or a run) or Busy (a run is in progress)."""
        if self.rejected:
            raise InvalidInput("an earlier write to this handle was rejected")
        if self.ran:
            raise InvalidInput("the command written to this open file has run; open the file again for another")
        try:
            self.control.check_idle()
        except Busy:
            # Refused whole: what this open file took before must not run at its close (never a mix).
            self.rejected = True
            raise
        if offset != len(self.buffer) and not self.append:  # with O_APPEND the kernel says the file's size
            raise InvalidInput("control files take their input in order, from offset 0")
        self.buffer += data
        self.position = offset + len(data)
        return bytes(self.buffer)

    def checked_up_to(self, start: int, checked: Checked) -> None:
        """What was written up to now is valid as far as ``checked.upto``, checked from byte ``start``
        (``ControlRegistry.check_partial``). Its parsed lines are kept when they continue what was kept
        (writes of one open file may be checked side by side): else the close parses them again."""
        if start == self.checked.upto:
            self.checked.upto = checked.upto
            self.checked.items.extend(checked.items)
        self.wrote = True

    def reject(self) -> None:
        self.rejected = True

    def take(self) -> tuple[bytes, Checked]:
        """Everything written, to run now, and what its writes checked of it: this open file takes no
        more input."""
        data, checked = bytes(self.buffer), self.checked
        self.buffer, self.checked, self.wrote, self.ran = bytearray(), Checked(), False, True
        return data, checked

    def held_elsewhere(self, path: str) -> bool:
        """Whether another process still holds this open file of the control file at ``path``
        (``/``-separated, from the mount's root): then its last close runs the command. Blocking."""
        return held_elsewhere(self.opener_pid, "/" + path, self.inode, self.position)
