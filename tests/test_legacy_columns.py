"""The legacy reader's batch path (``pinfs.data.legacy_columns``) decides exactly as the per-entry rules do.

Each shortcut is checked against the rule it stands for: the batch CID check only vouches for CIDs
libipld accepts; msgspec's sorted encoding of plain metadata is ``dump_metadata``'s text; and whole
documents read through the batches give the same pins and the same rejects, in the same order, as
the same documents read entry by entry with the batch path switched off.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pinfs.data import legacy_entries
from pinfs.data.cids import cid_problem
from pinfs.data.legacy import parse_legacy
from pinfs.data.legacy_columns import _ENCODER, canonical_shape_mask, valid_cid_mask
from pinfs.data.schema import _CANONICAL_TIMESTAMP, dump_metadata

DEFAULT = "2026-01-02T03:04:05.000006+00:00"


def _cidv1(version: int, codec: int, code: int, length: int, digest: bytes) -> str:
    data = bytes([version, codec, code, length]) + digest
    return "b" + base64.b32encode(data).decode().lower().rstrip("=")


header = st.tuples(
    st.sampled_from([1, 0, 2]),
    st.one_of(st.sampled_from([0x55, 0x70, 0x71]), st.integers(0, 255)),
    st.sampled_from([0x12, 0x13, 0x00]),
    st.sampled_from([0x20, 0x1F, 0x21]),
)


@given(parts=header, digest=st.binary(min_size=32, max_size=32), flip=st.integers(0, 58), char=st.characters())
@settings(max_examples=500, deadline=None)
def test_the_batch_cid_check_vouches_only_for_valid_cids(
    parts: tuple[int, int, int, int], digest: bytes, flip: int, char: str
) -> None:
    good = _cidv1(*parts, digest)
    mutated = good[:flip] + char + good[flip + 1 :]
    trailing = good[:-1] + "abcdefghijklmnopqrstuvwxyz234567"[("abcdefghijklmnopqrstuvwxyz234567".index(good[-1]) | 1)]
    values: list[Any] = [good, mutated, trailing, good.upper(), None, 5]
    mask = valid_cid_mask(values)
    for value, vouched in zip(values, mask.tolist(), strict=True):
        if vouched:
            assert cid_problem(value) is None, value
    if parts == (1, 0x55, 0x12, 0x20):
        assert mask[0]  # the common case is vouched for: the batch path is really taken


scalars = st.one_of(st.text(), st.integers(-(2**80), 2**80), st.booleans(), st.none())


@given(metadata=st.dictionaries(st.text(), scalars, max_size=6))
@settings(max_examples=500, deadline=None)
def test_plain_metadata_is_encoded_as_dump_metadata_does(metadata: dict[str, Any]) -> None:
    try:
        encoded = _ENCODER.encode(metadata).decode()
    except UnicodeEncodeError:  # a lone surrogate: msgspec never decodes one, so never encodes one
        return
    assert encoded == dump_metadata(metadata)


@given(
    value=st.one_of(
        st.text(max_size=40),
        st.sampled_from(
            [
                "2026-11-27T10:24:59.703189+00:00",
                "2026-13-01T00:00:00.000000+00:00",
                "0000-01-01T00:00:00.000000+00:00",
                "2026-02-30T00:00:00.000000+00:00",
            ]
        ),
    )
)
@settings(max_examples=300, deadline=None)
def test_the_batch_timestamp_shape_is_the_rules_shape(value: str) -> None:
    assert bool(canonical_shape_mask([value])[0]) == bool(_CANONICAL_TIMESTAMP.fullmatch(value))


V0 = "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"
V1 = "bafyreigdmqpykrgxyaxtlafqpqhzrb7qy2rh75nldvfd4tucqmqqme5yje"
V1_RAW = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
cids = st.sampled_from([V0, V1, V1_RAW, "QmNotACid", "", V1.upper(), V1_RAW[:-1] + "v"])
statuses = st.sampled_from(["pinned", "queued", "stored", "failed", "Pinned", " pinning ", "weird", "", None, 3, True])
TIMES = [
    "2026-11-27T10:24:59.703189+00:00",
    "2026-11-27T10:24:59Z",
    "2026-13-01T00:00:00.000000+00:00",
    "0001-01-01T00:00:00.000000+00:00",
    "yesterday",
    1764000000,
    1764000000000,
    None,
]
times = st.sampled_from(TIMES)
small = st.one_of(st.text(max_size=8), st.integers(-5, 5), st.booleans(), st.none())
metadata = st.one_of(st.dictionaries(st.sampled_from(["name", "size", "legacy_status", "é"]), small, max_size=3), small)
keys = {
    "cid": cids,
    "status": statuses,
    "created_at": times,
    "car_file_path": st.sampled_from(["", None, "/x/y.car", f"/s3-bucket/cars/{V1}.car", 7]),
    "metadata": metadata,
    "name": small,
    "hash": cids,
    "backend_name": st.sampled_from(["s3-main", "other"]),
    "pinned_at": times,
}
entry = st.one_of(
    cids,
    st.fixed_dictionaries({"cid": cids}, optional={key: value for key, value in keys.items() if key != "cid"}),
    st.fixed_dictionaries({}, optional=keys),
    small,
)


def _read(document: Any, *, batches: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    with monkeypatch.context() as patched:
        if not batches:
            patched.setattr(legacy_entries, "decode_batch", lambda raws: None)
            patched.setattr(legacy_entries, "decode_objects", lambda raws: None)
        result = parse_legacy(
            json.dumps(document).encode(), Path("pins.json"), "s3-main", "s3", default_created_at=DEFAULT
        )
    return result.records, result.rejected, result.shape


@given(entries=st.lists(entry, max_size=30), wrap=st.sampled_from(["list", "pins"]))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_documents_read_through_batches_as_through_the_rules(
    entries: list[Any], wrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    document = entries if wrap == "list" else {"pins": entries, "other": 1}

    fast = _read(document, batches=True, monkeypatch=monkeypatch)

    assert fast == _read(document, batches=False, monkeypatch=monkeypatch)


plain_object = st.fixed_dictionaries(
    {"cid": cids},
    optional={
        "status": st.sampled_from(["pinned", "queued", "stored", "failed", "Pinned", "weird", "", None]),
        "created_at": st.sampled_from([time for time in TIMES if isinstance(time, str)]),
        "car_file_path": st.sampled_from(["", None, "/x/y.car", f"/s3-bucket/cars/{V1}.car"]),
        "metadata": st.dictionaries(st.sampled_from(["name", "size", "legacy_status", "é"]), small, max_size=3),
    },
)


@given(entries=st.lists(plain_object, max_size=30))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_objects_read_column_by_column_as_through_the_rules(
    entries: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Objects of the five fields pinfs writes, of plain types: decoded as PlainObject, read by columns.
    fast = _read(entries, batches=True, monkeypatch=monkeypatch)

    assert fast == _read(entries, batches=False, monkeypatch=monkeypatch)


def test_a_batch_with_a_float_or_a_lone_surrogate_is_read_by_the_rules() -> None:
    text = f'[{{"cid": "{V0}", "size": 1.5}}, {{"cid": "{V1}", "name": "\\ud800"}}, "{V1_RAW}"]'

    result = parse_legacy(text.encode(), Path("pins.json"), "s3-main", "s3", default_created_at=DEFAULT)

    assert [(r["cid"], r["metadata"]) for r in result.records] == [(V0, '{"size":1.5}'), (V1_RAW, "{}")]
    assert [(r.reason, r.location) for r in result.rejected] == [
        ("metadata holds text that is not valid Unicode (lone surrogate)", "pins.json: entry 1")
    ]
