"""Property-based fuzzing of everything that reads untrusted bytes: the server's request validation (in
process and through a real server), the image-file reader and the weight loader.

Each property: a clear error of the documented type or a correct result; no other exception, no hang,
and the input left as it was. The budget is fixed per property; under CI the examples are derandomised
so a run is repeatable (run locally without CI=true to explore new examples).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import resource
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tifffile
import torch
from alarm import time_limit
from cmyk_profile import cmyk_profile
from conftest import FAST_MODEL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms
from safetensors.torch import save_file

from image_enhancer.imagefiles import ImageFile, ImageFileError, read_image, write_image
from image_enhancer.request import EnhanceOptions
from image_enhancer.server import validation
from image_enhancer.server.service import MAX_STATUS_MESSAGE
from image_enhancer.server.validation import RequestError
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.weights.safe_load import WeightsError, load_state_dict
from image_enhancer.wire import MAX_CHUNK, MIN_CHUNK, SAMPLE_BYTES, ImageInfo

settings.register_profile(
    "fuzz",
    max_examples=int(os.environ.get("IMAGE_ENHANCER_FUZZ_EXAMPLES", "150")),
    deadline=None,  # the time limit below is what counts; the CI machine's pace varies too much
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FUZZ = settings.get_profile("fuzz")
# Longest any one example may take before it counts as a hang.
EXAMPLE_LIMIT_S = 20

UINT32 = st.integers(0, 2**32 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)


# --- request validation, in process ---------------------------------------------------------------------

headers = st.builds(
    pb.ImageHeader,
    width=st.one_of(st.integers(0, 64), UINT32),
    height=st.one_of(st.integers(0, 64), UINT32),
    channels=st.one_of(st.integers(0, 5), UINT32),
    sample_type=st.one_of(st.integers(0, 4), INT32),
    colour_encoding=st.one_of(st.integers(0, 3), INT32),
)
options_messages = st.builds(
    pb.EnhanceOptions,
    model=st.one_of(
        st.just(""), st.just(FAST_MODEL), st.text(max_size=300),
        st.builds(lambda text, times: text * times, st.text(min_size=1, max_size=20), st.integers(1, 20_000)),
    ),
    scale=st.one_of(st.just(0.0), st.floats(0.5, 9), ANY_FLOAT),
    strength=st.one_of(st.none(), st.floats(-0.5, 1.5), ANY_FLOAT),
    tile=st.one_of(st.integers(0, 9000), UINT32),
    colour_fidelity=st.booleans(),
    auto_contrast=st.one_of(st.floats(-0.5, 1.5), ANY_FLOAT),
    alpha_mode=st.one_of(st.integers(0, 3), INT32),
)


@FUZZ
@given(header=headers, options=options_messages)
def test_any_header_and_options_give_a_valid_request_or_a_short_clear_error(header, options):
    with time_limit(EXAMPLE_LIMIT_S):
        try:
            spec = validation.image_info(header, max_pixels=40_000_000)
            request = validation.request_options(options, spec)
        except RequestError as error:
            assert error.message and len(error.message) <= MAX_STATUS_MESSAGE
            return
    assert 1 <= spec.channels <= 4 and spec.width * spec.height <= 40_000_000
    assert isinstance(request, EnhanceOptions)
    request.validate()  # what was accepted is what the engine accepts
    assert request.scale is None or math.isfinite(request.scale)


# Messages of an upload after its start message: chunks of awkward sizes, or a stray start message.
upload_messages = st.lists(
    st.one_of(
        st.sampled_from([0, 1, 1000, MIN_CHUNK - 1, MIN_CHUNK, MAX_CHUNK, MAX_CHUNK + 1]),
        st.integers(0, MAX_CHUNK + 10),
        st.just(-1),  # a second start message
    ),
    max_size=6,
)


@FUZZ
@given(
    side=st.integers(1, 1100), channels=st.integers(1, 4), sample_type=st.sampled_from(["u8", "u16", "f32"]),
    sizes=upload_messages,
)
def test_any_chunk_sequence_gives_exactly_the_image_or_a_clear_error(side, channels, sample_type, sizes):
    spec = ImageInfo(side, side, channels, sample_type)
    collector = validation.SampleCollector(spec)
    with time_limit(EXAMPLE_LIMIT_S):
        try:
            for size in sizes:
                message = pb.EnhanceRequest(start=pb.EnhanceStart()) if size < 0 else pb.EnhanceRequest(
                    chunk=b"\x01" * size
                )
                collector.add(message)
                assert collector.received <= spec.nbytes
            samples = collector.finish()
        except RequestError as error:
            assert error.code == grpc.StatusCode.INVALID_ARGUMENT and error.message
            return
    assert len(samples) == side * side * channels * SAMPLE_BYTES[sample_type]
    assert all(MIN_CHUNK <= size <= MAX_CHUNK for size in sizes[:-1]) and 0 < sizes[-1] <= MAX_CHUNK


# --- request validation, through a real server ----------------------------------------------------------

EXPECTED_REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 5))
@given(
    header=headers,
    options=options_messages,
    chunks=st.lists(st.integers(1, 300), max_size=3),
)
def test_the_server_answers_any_request_with_a_result_or_an_expected_status(
    grpc_server, header, options, chunks
):
    requests = [pb.EnhanceRequest(start=pb.EnhanceStart(image=header, options=options))]
    requests += [pb.EnhanceRequest(chunk=b"\x80" * size) for size in chunks]
    with time_limit(EXAMPLE_LIMIT_S), grpc.insecure_channel(grpc_server.address) as channel:
        stub = enhancer_pb2_grpc.EnhancerStub(channel)
        try:
            responses = list(stub.Enhance(iter(requests), timeout=EXAMPLE_LIMIT_S - 5))
        except grpc.RpcError as error:
            assert error.code() in EXPECTED_REFUSALS, (error.code(), error.details())
            assert error.details() and len(error.details()) <= MAX_STATUS_MESSAGE
        else:
            assert any(r.HasField("result") for r in responses)
        health = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert health(b"", timeout=5) is not None  # still answering


# --- image files ------------------------------------------------------------------------------------------


def seed_images(folder: Path) -> dict[str, bytes]:
    """Small valid files of every readable kind, as the starting points for mutation."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, rng.integers(0, 256, (12, 10, 1), dtype=np.uint8)], axis=2)
    seeds = {}
    for suffix, pixels in [(".png", rgba), (".jpg", rgb), (".webp", rgb), (".bmp", rgb)]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format={".jpg": "JPEG"}.get(suffix, suffix[1:].upper()))
        seeds[suffix] = buffer.getvalue()
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, (rgb.astype(np.uint16) * 257), photometric="rgb")
    seeds[".tif"] = buffer.getvalue()
    # A 16-bit colour PNG (read by pypng, not Pillow).
    import png

    buffer = io.BytesIO()
    png.Writer(10, 12, greyscale=False, bitdepth=16).write(
        buffer, (rgb.astype(np.uint16) * 257).reshape(12, 30)
    )
    seeds["16.png"] = buffer.getvalue()
    return seeds


@pytest.fixture(scope="module")
def image_seeds(tmp_path_factory) -> dict[str, bytes]:
    return seed_images(tmp_path_factory.mktemp("seeds"))


@st.composite
def mutations(draw, length: int) -> list[tuple[str, int, int]]:
    """Edits to a file of `length` bytes: overwrite a byte, cut the file, insert junk."""
    edit = st.tuples(
        st.sampled_from(["set", "cut", "insert"]), st.integers(0, max(0, length - 1)), st.integers(0, 255)
    )
    return draw(st.lists(edit, min_size=1, max_size=8))


def mutate(data: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    buffer = bytearray(data)
    for kind, position, value in edits:
        position = min(position, max(0, len(buffer) - 1))
        if kind == "set" and buffer:
            buffer[position] = value
        elif kind == "cut":
            del buffer[position:]
        else:
            buffer[position:position] = bytes([value]) * (1 + value % 7)
    return bytes(buffer)


def check_read(path: Path) -> None:
    """The reader's contract on any file: an image in an engine form, or ImageFileError."""
    before = hashlib.sha256(path.read_bytes()).digest()
    with time_limit(EXAMPLE_LIMIT_S):
        try:
            image = read_image(path, max_pixels=4_000_000)
        except ImageFileError as error:
            assert str(error)
        else:
            pixels = image.pixels
            assert pixels.ndim == 3 and 1 <= pixels.shape[2] <= 4
            assert pixels.dtype in (np.uint8, np.uint16, np.float32)
            assert pixels.shape[0] * pixels.shape[1] <= 4_000_000
    assert hashlib.sha256(path.read_bytes()).digest() == before, "reading changed the file"


@FUZZ
@given(data=st.data(), kind=st.sampled_from([".png", ".jpg", ".webp", ".bmp", ".tif", "16.png"]))
def test_mutated_image_files_give_an_image_or_a_clear_error(image_seeds, tmp_path, data, kind):
    seed = image_seeds[kind]
    path = tmp_path / f"fuzz{Path(kind).suffix}"
    path.write_bytes(mutate(seed, data.draw(mutations(len(seed)))))
    check_read(path)


def png_with_size(seed: bytes, width: int, height: int) -> bytes:
    """The PNG `seed` with its header claiming another size (and a correct checksum, so the claim is
    believed)."""
    ihdr = bytearray(seed[8 + 8 : 8 + 8 + 13])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return seed[:16] + bytes(ihdr) + crc + seed[16 + 13 + 4 :]


@FUZZ
@given(width=st.one_of(st.integers(0, 64), UINT32), height=st.one_of(st.integers(0, 64), UINT32),
       sixteen_bit=st.booleans())
def test_lying_png_headers_give_an_image_or_a_clear_error(image_seeds, tmp_path, width, height, sixteen_bit):
    path = tmp_path / "liar.png"
    path.write_bytes(png_with_size(image_seeds["16.png" if sixteen_bit else ".png"], width, height))
    check_read(path)


# --- TIFF layouts, ICC profiles and EXIF --------------------------------------------------------------------

# Growth of the test process's peak memory one example may cause: the seeds are a few hundred pixels, so
# anything near this is a decoder trusting a lying header.
EXAMPLE_PEAK_LIMIT_MIB = 256


@contextlib.contextmanager
def bounded_peak_memory() -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown < EXAMPLE_PEAK_LIMIT_MIB, f"one example raised the peak memory by {grown:.0f} MiB"


def camera_exif() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "Fuzz Camera"
    exif[0x0112] = 6
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = "2026:01:02 03:04:05"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitudeRef] = "N"
    return exif.tobytes()


def tiff_seeds(folder: Path) -> dict[str, bytes]:
    """Small TIFFs of each layout the reader honours, as starting points for mutation."""
    rng = np.random.default_rng(11)
    rgb = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    layouts = {
        "palette": (gray, {"photometric": "palette",
                           "colormap": rng.integers(0, 65536, (3, 256), np.uint16)}),
        "bilevel": (gray > 127, {"photometric": "miniswhite", "bitspersample": 1}),
        "planar-lzw": (np.moveaxis(rgb, 2, 0), {"photometric": "rgb", "planarconfig": "separate",
                                                "compression": "lzw"}),
        "cmyk-profile": (np.dstack([rgb, gray]), {"photometric": "separated", "iccprofile": cmyk_profile()}),
        "cmyk": (np.dstack([rgb, gray]), {"photometric": "separated", "compression": "zstd"}),
        "assoc-alpha": (np.dstack([rgb, gray]), {"photometric": "rgb", "extrasamples": [1],
                                                 "compression": "zlib"}),
        "jpeg-tiles": (np.tile(rgb, (4, 4, 1)), {"photometric": "rgb", "compression": "jpeg",
                                                 "tile": (16, 16)}),
        "float": (rgb.astype(np.float32) / 255, {"photometric": "rgb", "compression": "zlib",
                                                 "predictor": True}),
        "oriented": (rgb, {"photometric": "rgb", "extratags": [(274, "H", 1, 8, True)]}),
    }
    seeds = {}
    for name, (pixels, options) in layouts.items():
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, pixels, metadata=None, **options)
        seeds[name] = buffer.getvalue()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_image(folder / "exif.tif", ImageFile(rgb.astype(np.uint16) * 257, icc, camera_exif()))
    seeds["exif"] = (folder / "exif.tif").read_bytes()  # our own writer's EXIF sub-IFDs
    return seeds


@pytest.fixture(scope="module")
def tiff_layout_seeds(tmp_path_factory) -> dict[str, bytes]:
    return tiff_seeds(tmp_path_factory.mktemp("tiffs"))


TIFF_LAYOUTS = ["palette", "bilevel", "planar-lzw", "cmyk-profile", "cmyk", "assoc-alpha", "jpeg-tiles",
                "float", "oriented", "exif"]


@FUZZ
@given(data=st.data(), layout=st.sampled_from(TIFF_LAYOUTS))
def test_mutated_tiff_layouts_give_an_image_or_a_clear_error(tiff_layout_seeds, tmp_path, data, layout):
    seed = tiff_layout_seeds[layout]
    path = tmp_path / "fuzz.tif"
    path.write_bytes(mutate(seed, data.draw(mutations(len(seed)))))
    with bounded_peak_memory():
        check_read(path)


def embed(suffix: str, pixels: np.ndarray, icc: bytes, exif: bytes) -> bytes:
    """A file of type `suffix` carrying the (possibly damaged) profile and EXIF as its own metadata."""
    buffer = io.BytesIO()
    if suffix == ".tif":  # a TIFF keeps its profile in a tag; tifffile stores it as given
        tifffile.imwrite(buffer, pixels, photometric="rgb", iccprofile=icc, metadata=None)
    else:
        fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP"}[suffix]
        Image.fromarray(pixels).save(buffer, format=fmt, icc_profile=icc, exif=exif)
    return buffer.getvalue()


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 3))
@given(data=st.data(), suffix=st.sampled_from([".jpg", ".png", ".webp", ".tif"]))
def test_mutated_icc_and_exif_give_an_image_or_a_clear_error_and_outputs_read_back(tmp_path, data, suffix):
    """Damaged metadata is read or dropped, never fatal to the picture; and whatever was read is written
    to every output format in a form our own reader (and so Pillow) opens again."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = camera_exif()
    icc = mutate(icc, data.draw(mutations(len(icc)))) if data.draw(st.booleans()) else icc
    exif = mutate(exif, data.draw(mutations(len(exif))))
    pixels = np.random.default_rng(3).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    path = tmp_path / f"metadata{suffix}"
    try:
        path.write_bytes(embed(suffix, pixels, icc, exif))
    except (ValueError, OSError, struct.error, TypeError):
        return  # metadata the encoders themselves refuse to write cannot reach a reader
    with time_limit(EXAMPLE_LIMIT_S), bounded_peak_memory():
        try:
            image = read_image(path)
        except ImageFileError as error:
            assert str(error)
            return
        for output in (".png", ".jpg", ".tif", ".webp"):
            written = tmp_path / f"out{output}"
            written.unlink(missing_ok=True)
            write_image(written, image)
            assert read_image(written).pixels.shape == image.pixels.shape, output


# --- weight files -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_seeds(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("weights")
    tensors = {"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.zeros(4)}
    save_file(tensors, folder / "w.safetensors")
    torch.save({"params_ema": tensors}, folder / "w.pth")
    return {suffix: (folder / f"w{suffix}").read_bytes() for suffix in (".safetensors", ".pth")}


@FUZZ
@given(data=st.data(), suffix=st.sampled_from([".safetensors", ".pth"]))
def test_mutated_weight_files_give_tensors_or_a_clear_error(weight_seeds, tmp_path, data, suffix):
    seed = weight_seeds[suffix]
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(mutate(seed, data.draw(mutations(len(seed)))))
    before = hashlib.sha256(path.read_bytes()).digest()
    with time_limit(EXAMPLE_LIMIT_S):
        try:
            state_dict = load_state_dict(path)
        except WeightsError as error:
            assert str(error)
        else:
            assert state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values())
    assert hashlib.sha256(path.read_bytes()).digest() == before


# --- concurrent writers ---------------------------------------------------------------------------------


@settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 5))
@given(names=st.lists(st.integers(0, 2), min_size=2, max_size=6), seed=st.integers(0, 2**32 - 1),
       suffix=st.sampled_from([".png", ".tif", ".bmp"]))  # lossless: the picture read back is the one written
def test_concurrent_writers_without_overwrite_leave_one_whole_file_per_name(names, seed, suffix):
    """Writers started together, each with its own picture, onto overlapping names, none allowed to
    replace: each name ends up holding one writer's complete picture, exactly that writer reports
    success, the others are told the file appeared, and no temporary file is left."""
    rng = np.random.default_rng(seed)
    pictures = []
    for index in range(len(names)):
        height, width = (int(side) for side in rng.integers(1, 40, size=2))
        picture = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        picture[0, 0, 0] = index  # no two writers' pictures are the same
        pictures.append(picture)
    outcomes: list[object] = [None] * len(names)
    barrier = threading.Barrier(len(names), timeout=EXAMPLE_LIMIT_S)
    with tempfile.TemporaryDirectory() as folder, time_limit(EXAMPLE_LIMIT_S):

        def write(index: int) -> None:
            target = Path(folder) / f"name{names[index]}{suffix}"
            barrier.wait()
            try:
                write_image(target, ImageFile(pictures[index]), overwrite=False)
                outcomes[index] = "written"
            except OSError as error:
                outcomes[index] = error

        writers = [threading.Thread(target=write, args=(index,)) for index in range(len(names))]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(EXAMPLE_LIMIT_S)
        for name in set(names):
            path = Path(folder) / f"name{name}{suffix}"
            team = [index for index, chosen in enumerate(names) if chosen == name]
            winners = [index for index in team if outcomes[index] == "written"]
            assert len(winners) == 1, f"{path.name}: {[outcomes[index] for index in team]}"
            assert np.array_equal(read_image(path).pixels, pictures[winners[0]])
            for loser in set(team) - set(winners):
                assert "appeared while this run was writing it" in str(outcomes[loser])
        assert sorted(os.listdir(folder)) == sorted(f"name{name}{suffix}" for name in set(names))
