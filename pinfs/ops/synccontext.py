"""What one sync run shares: each backend's driver (created and checked once), a snapshot of every
backend, where a pin's content CAR can be found (staging directory, then other backends), and what waits
for a driver's final flush (``pinfs.ops.sync``, ``pinfs.ops.backup``).

Threading: synchronous; one run uses it from one thread.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from pinfs.data.backends import Backend
from pinfs.data.cids import is_valid_cid, standard_forms
from pinfs.data.readers import READERS
from pinfs.data.schema import STORED
from pinfs.data.snapshots import PinSnapshot
from pinfs.data.store import PinStore
from pinfs.errors import NotFound, PinfsError, Unsupported
from pinfs.ops.drivers import Driver, DriverError, driver_for, has_driver, key_for
from pinfs.ops.drivers.filesystem import FilesystemDriver

STAGING_DIR = "cars"


class SyncContext:
    """Shared by one run: drivers (created and checked once each) and snapshots of every backend."""

    def __init__(self, root: Path, backends: list[Backend], dry_run: bool) -> None:
        self.root = root
        self.backends = backends
        self.dry_run = dry_run
        self._drivers: dict[str, Driver | PinfsError] = {}
        self._snapshots: dict[str, PinSnapshot | None] = {}
        # What waits for a driver's flush (pin_mappings.car and backup copies: one commit at the end).
        self._staged: dict[str, list[tuple[Callable[[], object], Callable[[str], None]]]] = {}

    def close(self) -> None:
        READERS.stop_reading(snapshot.identity for snapshot in self._snapshots.values() if snapshot is not None)
        for driver in self._drivers.values():
            if not isinstance(driver, PinfsError):
                driver.close()

    def after_flush(self, backend: Backend, done: Callable[[], object], failed: Callable[[str], None]) -> None:
        """Call ``done`` once the files put on ``backend`` are published by ``finish``, else ``failed(reason)``."""
        self._staged.setdefault(backend.name, []).append((done, failed))

    def finish(self) -> None:
        """Flush every driver that has files staged (one commit each on git and the Hub)."""
        for name, waiting in self._staged.items():
            driver = self._drivers.get(name)
            try:
                if isinstance(driver, PinfsError) or driver is None:
                    raise driver or DriverError(f"{name}: no driver")
                driver.flush(f"pinfs sync: pin mappings ({len(waiting)} file{'s' if len(waiting) != 1 else ''})")
            except PinfsError as exc:
                for _done, failed in waiting:
                    failed(f"publishing failed: {exc}")
                continue
            for done, _failed in waiting:
                done()
        self._staged.clear()

    def driver(self, backend: Backend) -> Driver:
        """The backend's driver, reachable; raises Unsupported or DriverError (remembered per run)."""
        found = self._drivers.get(backend.name)
        if found is None:
            try:
                driver = driver_for(backend, self.root)
                if not (self.dry_run and isinstance(driver, FilesystemDriver) and driver.create):
                    driver.check()  # (a dry run must not create a storage directory)
                found = driver
            except (Unsupported, DriverError) as exc:
                found = exc
            self._drivers[backend.name] = found
        if isinstance(found, PinfsError):
            raise found
        return found

    def snapshot(self, backend: Backend) -> PinSnapshot | None:
        if backend.name not in self._snapshots:
            try:
                snapshot = self._snapshots[backend.name] = PinStore(backend).snapshot()
                # looked up in for the whole run (hours, for a big sync): maintenance keeps its files
                READERS.start_reading([snapshot.identity])
            except (PinfsError, OSError):
                self._snapshots[backend.name] = None
        return self._snapshots[backend.name]

    def staging_paths(self, cid: str) -> list[Path]:
        """``ROOT/cars/<cid>.car``, under the pin's spelling and then its standard ones (issue #16)."""
        if "/" in cid or not is_valid_cid(cid):
            return []
        return [self.root / STAGING_DIR / f"{form}.car" for form in dict.fromkeys([cid, *standard_forms(cid)])]

    def sources(self, target: Backend, cid: str) -> Iterator[tuple[str, Callable[[], bytes], Callable[[], bool]]]:
        """Candidate places for ``cid``'s content CAR, best first: (label, fetch, exists)."""
        for staged in self.staging_paths(cid):
            yield str(staged), _bind_read(staged), staged.is_file
        for other in self.backends:
            if other.name == target.name or not other.enabled or not has_driver(other):
                continue
            snapshot = self.snapshot(other)
            record = snapshot.find(cid) if snapshot is not None else None  # spelled in any way (issue #16)
            if record is None or record.get("status") != STORED:
                continue
            try:
                driver = self.driver(other)
                key = key_for(str(record.get("car_file_path")))
            except PinfsError:
                continue
            label = f"backend {other.name} ({key})"
            yield label, bind_get(driver, cid, key), bind_exists(driver, cid, key)


def _bind_read(path: Path) -> Callable[[], bytes]:
    return lambda: _read_file(path)


def bind_get(driver: Driver, cid: str, key: str) -> Callable[[], bytes]:
    return lambda: driver.get_car(cid, key)


def bind_exists(driver: Driver, cid: str, key: str) -> Callable[[], bool]:
    return lambda: driver.has_car(cid, key)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except OSError as exc:
        raise DriverError(f"reading {path} failed ({exc.strerror or exc})") from None
