"""Tests for pinfs.data.car (the pin_mappings.car codec) and pinfs.data.carv1 (the generic CARv1 helpers)."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import dag_cbor
import pytest
from multiformats import CID, varint

from pinfs.data import car, carv1
from pinfs.data.schema import REQUIRED_COLUMNS
from pinfs.errors import CorruptData

CREATED = "2026-11-24T19:09:23.123456+00:00"


def make_records(n: int, backend: str = "s3-main") -> list[dict[str, str]]:
    records = []
    for i in range(n):
        cid = carv1.make_raw_block(f"content {i}".encode())[0]
        records.append(
            {
                "cid": cid,
                "car_file_path": f"/s3-bucket/cars/{cid}.car",
                "backend_name": backend,
                "created_at": CREATED,
                "status": ("stored", "pending", "failed")[i % 3],
                "metadata": json.dumps({"i": i, "name": f"pin ü {i}"}),
            }
        )
    return records


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return make_records(2500)


@pytest.fixture(scope="module")
def encoded(records: list[dict[str, str]]) -> bytes:
    return car.encode_pin_mappings_car(records, "s3-main", CREATED)


# --------------------------------------------------------------------------- round trips


def test_round_trip(records: list[dict[str, str]], encoded: bytes) -> None:
    decoded = car.decode_pin_mappings_car(encoded)
    assert decoded.records == records
    assert decoded.backend_name == "s3-main"
    assert decoded.created_at == CREATED
    assert decoded.version == "2.0"
    assert decoded.form == "carv1"


def test_write_and_read(tmp_path: Path, records: list[dict[str, str]], encoded: bytes) -> None:
    target = tmp_path / "pin_mappings.car"
    written = car.write_pin_mappings_car(target, records, "s3-main", CREATED)
    assert written == len(encoded) == target.stat().st_size
    assert target.read_bytes() == encoded
    assert car.read_pin_mappings_car(target).records == records
    assert [p.name for p in tmp_path.iterdir()] == ["pin_mappings.car"]  # no temp file left


def test_empty_round_trip() -> None:
    decoded = car.decode_pin_mappings_car(car.encode_pin_mappings_car([], "b", CREATED))
    assert decoded.records == []
    assert decoded.backend_name == "b"


def test_deterministic(records: list[dict[str, str]], encoded: bytes) -> None:
    reordered_keys = [dict(reversed(list(r.items()))) for r in records]
    assert car.encode_pin_mappings_car(reordered_keys, "s3-main", CREATED) == encoded
    assert car.encode_pin_mappings_car(iter(records), "s3-main", CREATED) == encoded
    assert car.encode_pin_mappings_car(records, "s3-main", "2027-01-01T00:00:00+00:00") != encoded


def test_extra_fields_are_dropped_and_bad_records_rejected(records: list[dict[str, str]]) -> None:
    extra = [{**r, "updated_at": CREATED} for r in records[:3]]
    decoded = car.decode_pin_mappings_car(car.encode_pin_mappings_car(extra, "b", CREATED))
    assert decoded.records == records[:3]
    missing = {k: v for k, v in records[0].items() if k != "status"}
    with pytest.raises(ValueError, match="status"):
        car.encode_pin_mappings_car([missing], "b", CREATED)
    with pytest.raises(ValueError, match="metadata is not a string"):
        car.encode_pin_mappings_car([{**records[0], "metadata": {}}], "b", CREATED)


def test_hundred_thousand_records_round_trip() -> None:
    base = make_records(1)[0]
    many = [{**base, "cid": f"{base['cid']}{i}"} for i in range(100_000)]
    data = car.encode_pin_mappings_car(many, "s3-main", CREATED)
    decoded = car.decode_pin_mappings_car(data)
    assert len(decoded.records) == 100_000
    assert decoded.records[-1] == many[-1]
    assert decoded.records == many


# --------------------------------------------------------------------------- legacy JSON form


def test_legacy_json_form_decodes(records: list[dict[str, str]]) -> None:
    doc = {
        "format": "pin_mappings_car",
        "version": "1.0",
        "created_at": "2025-07-31T12:25:59.005216",
        "pin_mappings": records[:5],
    }
    decoded = car.decode_pin_mappings_car(json.dumps(doc, indent=2).encode())
    assert decoded.form == "legacy-json"
    assert decoded.version == "1.0"
    assert decoded.records == records[:5]
    assert decoded.backend_name == "s3-main"  # taken from the records when the header lacks it
    assert decoded.created_at == "2025-07-31T12:25:59.005216"


def test_legacy_json_pandas_types_are_converted(records: list[dict[str, str]]) -> None:
    row = {**records[0], "created_at": 1753964759005, "metadata": {"name": "x"}}
    doc = {"format": "pin_mappings_car", "version": "1.0", "pin_mappings": [row]}
    decoded = car.decode_pin_mappings_car(json.dumps(doc).encode())
    assert decoded.records[0]["created_at"].startswith("2025-07-31T")
    assert decoded.records[0]["metadata"] == '{"name":"x"}'


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "something_else", "pin_mappings": []},
        {"format": "pin_mappings_car"},
        {"format": "pin_mappings_car", "pin_mappings": [{"cid": "bafkqaaa"}]},
        {"format": "pin_mappings_car", "pin_mappings": ["not an object"]},
    ],
)
def test_legacy_json_bad_documents(doc: dict) -> None:
    with pytest.raises(CorruptData):
        car.decode_pin_mappings_car(json.dumps(doc).encode(), "x.car")


def test_legacy_json_not_json() -> None:
    with pytest.raises(CorruptData, match=r"^x\.car: not valid JSON"):
        car.decode_pin_mappings_car(b'{"format": ', "x.car")


def test_to_legacy_json(encoded: bytes, records: list[dict[str, str]]) -> None:
    doc = car.to_legacy_json(car.decode_pin_mappings_car(encoded))
    assert doc == {
        "format": "pin_mappings_car",
        "version": "1.0",
        "backend_name": "s3-main",
        "created_at": CREATED,
        "count": len(records),
        "pin_mappings": records,
    }
    again = car.decode_pin_mappings_car(json.dumps(doc).encode())
    assert again.records == records and again.form == "legacy-json"


# --------------------------------------------------------------------------- independent decoder


def independent_parse(data: bytes) -> tuple[dict, list[tuple[CID, bytes]]]:
    """Parse a CARv1 with multiformats + dag_cbor only (no pinfs, no libipld)."""
    length, used, _ = varint.decode_raw(data)
    header = dag_cbor.decode(data[used : used + length])
    pos = used + length
    sections = []
    while pos < len(data):
        length, used, _ = varint.decode_raw(data[pos:])
        section = data[pos + used : pos + used + length]
        assert len(section) == length
        cid_len = 0
        for _ in range(3):  # version, codec, multihash code
            cid_len += varint.decode_raw(section[cid_len:])[1]
        digest_len, used_len, _ = varint.decode_raw(section[cid_len:])
        cid_len += used_len + digest_len
        sections.append((CID.decode(section[:cid_len]), section[cid_len:]))
        pos += used + length
    return header, sections


def test_independent_decoder(records: list[dict[str, str]], encoded: bytes) -> None:
    header, sections = independent_parse(encoded)
    assert header["version"] == 1
    assert len(header["roots"]) == 1 and isinstance(header["roots"][0], CID)
    for cid, block in sections:
        assert (cid.version, cid.codec.name, cid.hashfun.name) == (1, "dag-cbor", "sha2-256")
        assert cid.raw_digest == hashlib.sha256(block).digest()
    blocks = {cid: dag_cbor.decode(block) for cid, block in sections}
    root_cid = header["roots"][0]
    assert sections[0][0] == root_cid  # root block written first
    root = blocks[root_cid]
    assert {k: root[k] for k in ("format", "version", "backend_name", "created_at", "count")} == {
        "format": "pin_mappings_car",
        "version": "2.0",
        "backend_name": "s3-main",
        "created_at": CREATED,
        "count": len(records),
    }
    assert all(isinstance(link, CID) for link in root["entries"])  # real tag-42 links
    assert [c for c, _ in sections[1:]] == root["entries"]
    flat = [row for link in root["entries"] for row in blocks[link]]
    assert flat == records
    assert all(set(row) == set(REQUIRED_COLUMNS) for row in flat)


def test_generic_car_is_readable_independently() -> None:
    blocks = [carv1.make_raw_block(b"hello"), carv1.make_raw_block(b"world")]
    data = carv1.encode_car([blocks[0][0]], blocks)
    header, sections = independent_parse(data)
    assert [str(c) for c in header["roots"]] == [CID.decode(blocks[0][0]).encode("base58btc")]
    assert [(c.encode("base32"), b) for c, b in sections] == blocks
    roots, it = carv1.iter_car_blocks(data)
    assert roots == [blocks[0][0]]
    assert list(it) == blocks


# --------------------------------------------------------------------------- corruption


def test_every_flipped_block_byte_is_caught(encoded: bytes) -> None:
    header_len, used, _ = varint.decode_raw(encoded)
    start = used + header_len
    sampled = set(range(start, len(encoded), max(1, (len(encoded) - start) // 3000)))
    section_heads = set()
    pos = start
    while pos < len(encoded):  # every byte of each section's length varint, CID and first block bytes
        length, used, _ = varint.decode_raw(encoded[pos:])
        section_heads.update(range(pos, pos + used + 40))
        pos += used + length
    _, sections = independent_parse(encoded)
    root_section_end = (
        start
        + len(varint.encode(len(bytes(sections[0][0])) + len(sections[0][1])))
        + len(bytes(sections[0][0]))
        + len(sections[0][1])
    )
    for pos in sorted(sampled | section_heads | set(range(start, root_section_end))):
        corrupted = bytearray(encoded)
        corrupted[pos] ^= 0x01
        with pytest.raises(CorruptData, match=r"^t\.car: "):
            car.decode_pin_mappings_car(bytes(corrupted), "t.car")


def test_flipped_header_bytes_are_caught(encoded: bytes) -> None:
    header_len, used, _ = varint.decode_raw(encoded)
    for pos in range(used + header_len):
        corrupted = bytearray(encoded)
        corrupted[pos] ^= 0x01
        with pytest.raises(CorruptData):
            car.decode_pin_mappings_car(bytes(corrupted), "t.car")


def test_truncation_is_caught(encoded: bytes) -> None:
    for cut in [0, 1, 10, 58, 59, 60, 100, len(encoded) // 2, len(encoded) - 1]:
        with pytest.raises(CorruptData):
            car.decode_pin_mappings_car(encoded[:cut], "t.car")


def test_unlinked_or_missing_blocks_are_caught(encoded: bytes) -> None:
    extra = carv1.make_raw_block(b"stray")
    stray = (
        bytes(varint.encode(len(bytes(CID.decode(extra[0]))) + len(extra[1]))) + bytes(CID.decode(extra[0])) + extra[1]
    )
    with pytest.raises(CorruptData, match="not CIDv1 dag-cbor"):
        car.decode_pin_mappings_car(encoded + stray)
    _, sections = independent_parse(encoded)
    last_cid, last_block = sections[-1]
    last_len = (
        len(bytes(varint.encode(len(bytes(last_cid)) + len(last_block)))) + len(bytes(last_cid)) + len(last_block)
    )
    with pytest.raises(CorruptData, match="missing"):
        car.decode_pin_mappings_car(encoded[:-last_len])


def forge_car(root: dict, entries: list[object]) -> bytes:
    """A well-hashed CAR whose content is wrong: built with dag_cbor/multiformats, not pinfs."""
    entry_blocks = [dag_cbor.encode(e) for e in entries]
    entry_cids = [CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(b).digest())) for b in entry_blocks]
    root_block = dag_cbor.encode({**root, "entries": root.get("entries", entry_cids)})
    root_cid = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(root_block).digest()))
    header = dag_cbor.encode({"roots": [root_cid], "version": 1})
    out = bytes(varint.encode(len(header))) + header
    for cid, block in [(root_cid, root_block), *zip(entry_cids, entry_blocks, strict=True)]:
        out += bytes(varint.encode(len(bytes(cid)) + len(block))) + bytes(cid) + block
    return out


ROOT = {"format": "pin_mappings_car", "version": "2.0", "backend_name": "b", "created_at": CREATED}


def test_forged_cars(records: list[dict[str, str]]) -> None:
    good = forge_car({**ROOT, "count": 2}, [records[:2]])
    assert car.decode_pin_mappings_car(good).records == records[:2]
    bad_cases = {
        "count": forge_car({**ROOT, "count": 3}, [records[:2]]),
        "without status": forge_car({**ROOT, "count": 1}, [[{k: v for k, v in records[0].items() if k != "status"}]]),
        "not a string": forge_car({**ROOT, "count": 1}, [[{**records[0], "status": 1}]]),
        "not a list": forge_car({**ROOT, "count": 1}, [{"a": "b"}]),
        "version": forge_car({**ROOT, "version": "9.9", "count": 0}, []),
        "entries": forge_car({**ROOT, "count": 0, "entries": [b"\x01\x71"]}, []),
    }
    for what, data in bad_cases.items():
        with pytest.raises(CorruptData, match=what):
            car.decode_pin_mappings_car(data, "f.car")


def test_link_to_absent_block_is_caught() -> None:
    absent = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(b"x").digest()))
    data = forge_car({**ROOT, "count": 0, "entries": [absent]}, [])
    with pytest.raises(CorruptData, match="entry block .* is missing"):
        car.decode_pin_mappings_car(data)


def test_repeated_links_cannot_amplify(records: list[dict[str, str]]) -> None:
    entry = dag_cbor.encode(records[:100])
    link = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(entry).digest()))
    root = {**ROOT, "count": 100 * 5000, "entries": [link] * 5000}
    root_block = dag_cbor.encode(root)
    root_cid = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(root_block).digest()))
    header = dag_cbor.encode({"roots": [root_cid], "version": 1})
    data = bytes(varint.encode(len(header))) + header
    for cid, block in [(root_cid, root_block), (link, entry)]:
        data += bytes(varint.encode(len(bytes(cid)) + len(block))) + bytes(cid) + block
    with pytest.raises(CorruptData, match="repeat"):
        car.decode_pin_mappings_car(data)


def test_bad_varints_and_huge_lengths_fail_fast(encoded: bytes) -> None:
    header_len, used, _ = varint.decode_raw(encoded)
    head = encoded[: used + header_len]
    cases = [
        b"\xff" * 20,  # endless varint
        b"\x80\x00",  # non-minimal varint
        b"\xff\xff\xff\xff\x0f" + b"\x00" * 10,  # header far longer than the data
        head + b"\xff\xff\xff\xff\xff\xff\xff\x7f",  # section of absurd length
        head + bytes(varint.encode(65 * 1024 * 1024)) + b"\x01",  # over the section limit
        head + b"\x00",  # zero-length section
        head + b"\xff\xff",  # truncated varint
    ]
    for data in cases:
        started = time.perf_counter()
        with pytest.raises(CorruptData):
            car.decode_pin_mappings_car(data, "v.car")
        with pytest.raises(CorruptData):
            roots, blocks = carv1.iter_car_blocks(data, "v.car")
            list(blocks)
        # A hang guard (it takes milliseconds): an absurd declared length must not be read or allocated.
        assert time.perf_counter() - started < 10


def test_wrong_root_count_and_non_car() -> None:
    blocks = [carv1.make_raw_block(b"a")]
    with pytest.raises(CorruptData, match="one root"):
        car.decode_pin_mappings_car(carv1.encode_car([], blocks))
    with pytest.raises(CorruptData):
        car.decode_pin_mappings_car(b"\x05hello")


# --------------------------------------------------------------------------- content CARs


def content_car() -> tuple[str, list[tuple[str, bytes]], bytes]:
    blocks = [carv1.make_raw_block(f"chunk {i}".encode() * 100) for i in range(5)]
    root = blocks[0][0]
    return root, blocks, carv1.encode_car([root], blocks)


def test_make_raw_block() -> None:
    cid, data = carv1.make_raw_block(b"hello")
    decoded = CID.decode(cid)
    assert cid.startswith("bafkrei") and data == b"hello"
    assert (decoded.version, decoded.codec.name, decoded.raw_digest) == (1, "raw", hashlib.sha256(b"hello").digest())


def test_verify_content_car_accepts_the_right_root() -> None:
    root, blocks, data = content_car()
    assert carv1.verify_content_car(data, root, "c.car") == len(blocks)
    base58_form = CID.decode(root).encode("base58btc")
    assert carv1.verify_content_car(data, base58_form, "c.car") == len(blocks)


def test_verify_content_car_rejects_wrong_root_and_corruption() -> None:
    root, blocks, data = content_car()
    with pytest.raises(CorruptData, match="do not include"):
        carv1.verify_content_car(data, blocks[1][0], "c.car")
    with pytest.raises(CorruptData, match="not a CID"):
        carv1.verify_content_car(data, "nonsense", "c.car")
    corrupted = bytearray(data)
    corrupted[-10] ^= 0xFF
    with pytest.raises(CorruptData, match=r"^c\.car: block .* does not match its hash"):
        carv1.verify_content_car(bytes(corrupted), root, "c.car")
    without_root = carv1.encode_car([root], blocks[1:])
    with pytest.raises(CorruptData, match="missing"):
        carv1.verify_content_car(without_root, root, "c.car")


def test_cidv0_root_matches_cidv1_dag_pb() -> None:
    block = b"\x0a\x02\x08\x01"  # any bytes: the hash is what is compared
    digest = hashlib.sha256(block).digest()
    v0 = CID("base58btc", 0, "dag-pb", ("sha2-256", digest)).encode()
    v1 = CID("base32", 1, "dag-pb", ("sha2-256", digest)).encode()
    data = carv1.encode_car([v0], [(v0, block)])
    assert carv1.verify_content_car(data, v1, "c.car") == 1
    assert carv1.verify_content_car(carv1.encode_car([v1], [(v1, block)]), v0, "c.car") == 1
    roots, blocks = carv1.iter_car_blocks(data)
    assert roots == [v0]
    assert list(blocks) == [(v0, block)]


def test_identity_hash_blocks_are_verified() -> None:
    cid = CID("base32", 1, "raw", ("identity", b"tiny")).encode()
    assert carv1.verify_content_car(carv1.encode_car([cid], [(cid, b"tiny")]), cid, "c.car") == 1
    with pytest.raises(CorruptData, match="does not match"):
        carv1.verify_content_car(carv1.encode_car([cid], [(cid, b"tinY")]), cid, "c.car")


def test_carv2_payload_is_read() -> None:
    root, blocks, v1 = content_car()
    pragma = bytes.fromhex("0aa16776657273696f6e02")
    offset = len(pragma) + 40
    header = bytes(16) + offset.to_bytes(8, "little") + len(v1).to_bytes(8, "little") + bytes(8)
    assert carv1.verify_content_car(pragma + header + v1, root, "c.car") == len(blocks)
    bad = pragma + bytes(16) + offset.to_bytes(8, "little") + (len(v1) + 1).to_bytes(8, "little") + bytes(8) + v1
    with pytest.raises(CorruptData, match="CARv2"):
        carv1.verify_content_car(bad, root, "c.car")
