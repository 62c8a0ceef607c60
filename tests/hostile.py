"""Hostile inputs built for real, byte by byte: what an attacker would upload.

Each builder writes a file that a real reader (OpenSlide, Pillow, zipfile, a JSON parser) takes
for what it claims to be; none of them holds its claimed size in memory while being built.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path

from PIL import Image


def hostile_vms(path: Path, target: Path) -> Path:
    """A Hamamatsu VMS index (plain text) whose image and map files are `target`, named through
    enough `../` to reach the root from wherever the index is stored."""
    climb = "../" * 40
    named = climb + str(target.resolve()).lstrip("/")
    path.write_text(
        "[Virtual Microscope Specimen]\n"
        "NoLayers=1\nNoJpegColumns=1\nNoJpegRows=1\n"
        f"ImageFile={named}\nMapFile={named}\n"
        "PhysicalWidth=1000000\nPhysicalHeight=1000000\n"
    )
    return path


def canary_jpeg(path: Path) -> Path:
    """A JPEG with restart markers, as a VMS image file must be: OpenSlide opens it."""
    Image.new("RGB", (512, 512), (200, 50, 50)).save(path, quality=90, restart_marker_rows=1)
    return path


def sparse_tiff(path: Path, width: int, height: int, tile: int = 512) -> Path:
    """A tiled RGB TIFF declaring width x height px whose tiles are all absent (offset and byte
    count 0): OpenSlide opens it as generic-tiff; 200000 x 200000 px is a 1.2 MB file."""
    tiles = math.ceil(width / tile) * math.ceil(height / tile)
    entries = [  # (tag, type, count, value); type 3 SHORT, 4 LONG; None: an offset below
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 3, None),  # BitsPerSample 8,8,8
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2),  # RGB
        (277, 3, 1, 3),
        (284, 3, 1, 1),
        (322, 3, 1, tile),
        (323, 3, 1, tile),
        (324, 4, tiles, None),  # TileOffsets, all 0
        (325, 4, tiles, None),  # TileByteCounts, all 0
    ]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    offsets_at = bits_at + 6
    at = {258: bits_at, 324: offsets_at, 325: offsets_at + 4 * tiles}
    out = bytearray(b"II*\x00" + struct.pack("<IH", 8, len(entries)))
    for tag, kind, count, value in entries:
        if value is None:
            out += struct.pack("<HHII", tag, kind, count, at[tag])
        elif kind == 3:
            out += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            out += struct.pack("<HHII", tag, kind, count, value)
    out += struct.pack("<I", 0) + struct.pack("<3H", 8, 8, 8) + bytes(8 * tiles)
    path.write_bytes(bytes(out))
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def blank_png(path: Path, width: int, height: int) -> Path:
    """A complete, valid RGB PNG of width x height black pixels, compressed row by row (so that
    a 12000 x 12000 image, 432 MB decoded, is written without holding it): a few hundred kB."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte 0, then black pixels
    idat = bytearray()
    for _ in range(height):
        idat += compressor.compress(row)
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", bytes(idat))
        + _png_chunk(b"IEND", b"")
    )
    return path


def zip_bomb(path: Path, inflated: int, member: str = "9/0/9_idx5_x1_y1_class0.png") -> Path:
    """A patch-layout zip whose one member inflates to `inflated` zero bytes (about 1000:1)."""
    block = bytes(1 << 20)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive,
        archive.open(member, "w", force_zip64=inflated > 2**31) as out,
    ):
        for _ in range(inflated // len(block)):
            out.write(block)
    return path


def zip_lying_about_sizes(path: Path, inflated: int) -> Path:
    """`zip_bomb` whose headers claim the member inflates to 100 bytes: a reader that trusts the
    claim and inflates in one call holds all of it; one that reads in chunks stops at the claim."""
    zip_bomb(path, inflated)
    data = bytearray(path.read_bytes())
    directory = data.rfind(b"PK\x01\x02")
    # Central directory entry: uncompressed size at offset 24; local header: at offset 22.
    struct.pack_into("<I", data, directory + 24, 100)
    struct.pack_into("<I", data, 22, 100)
    path.write_bytes(bytes(data))
    return path


def deeply_nested_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def many_points_geojson(points: int) -> bytes:
    """One IDC polygon with `points` vertices: a labels file that is large but well formed."""
    ring = b",".join(b"[%d,%d]" % (i % 1000, i // 1000) for i in range(points))
    return (
        b'{"type":"FeatureCollection","features":[{"type":"Feature",'
        b'"properties":{"classification":{"name":"IDC"}},'
        b'"geometry":{"type":"Polygon","coordinates":[[' + ring + b"]]}}]}"
    )
