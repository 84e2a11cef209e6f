"""The clients' shared core: request chunking, result assembly, status-to-error mapping, addresses.

These are pure functions; the clients themselves are tested against the real server elsewhere."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from image_enhancer import wire
from image_enhancer.client import core
from image_enhancer.client.core import EnhancerError
from image_enhancer.client.lite import LiteClient
from image_enhancer.request import EnhanceOptions as Options
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.wire import ImageInfo

MIB = wire.MIB


def test_requests_are_a_start_then_chunks_that_rebuild_the_data():
    image = ImageInfo(1000, 700, 4, "u16")  # 5.6 MB: two full chunks and a short last one
    data = bytes(range(256)) * (image.nbytes // 256) + bytes(image.nbytes % 256)
    requests = list(
        core.enhance_requests(data, image, Options(model="m", scale=2, strength=0.25, alpha_mode="bicubic"))
    )
    start = requests[0].start
    assert (start.image.width, start.image.height, start.image.channels) == (1000, 700, 4)
    assert (
        start.image.sample_type == pb.SAMPLE_TYPE_U16
        and start.image.colour_encoding == pb.COLOUR_ENCODING_SRGB
    )
    assert (start.options.model, start.options.scale, start.options.strength) == ("m", 2.0, 0.25)
    assert start.options.alpha_mode == pb.ALPHA_MODE_BICUBIC
    sizes = [len(r.chunk) for r in requests[1:]]
    assert sizes[:-1] == [wire.DEFAULT_CHUNK] * (len(sizes) - 1) and 0 < sizes[-1] <= wire.DEFAULT_CHUNK
    assert b"".join(r.chunk for r in requests[1:]) == data


def test_no_strength_means_the_field_is_absent():
    start = next(core.enhance_requests(b"\0" * 3, ImageInfo(1, 1, 3, "u8"), Options()))
    assert not start.start.options.HasField("strength")


@pytest.mark.parametrize(
    ("image", "size", "chunk", "message"),
    [
        (ImageInfo(4, 4, 3, "u8"), 47, wire.DEFAULT_CHUNK, "needs 48 bytes, got 47"),
        (ImageInfo(4, 4, 3, "u9"), 48, wire.DEFAULT_CHUNK, "unknown sample type 'u9'"),
        (ImageInfo(4, 4, 3, "u8", "adobe"), 48, wire.DEFAULT_CHUNK, "unknown colour encoding 'adobe'"),
        (ImageInfo(4, 4, 3, "u8"), 48, MIB // 2, "chunk_size must be 1-4 MiB"),
    ],
)
def test_bad_requests_fail_before_anything_is_sent(image, size, chunk, message):
    with pytest.raises((EnhancerError, ValueError), match=message):
        next(core.enhance_requests(bytes(size), image, Options(), chunk))


def test_unknown_option_names_are_refused():
    with pytest.raises(EnhancerError, match="unknown alpha mode 'soft'"):
        next(core.enhance_requests(b"\0" * 3, ImageInfo(1, 1, 3, "u8"), Options(alpha_mode="soft")))


def responses(*messages: pb.EnhanceResponse) -> list[pb.EnhanceResponse]:
    return list(messages)


HEADER = pb.ImageHeader(
    width=2, height=1, channels=3, sample_type=pb.SAMPLE_TYPE_U8, colour_encoding=pb.COLOUR_ENCODING_LINEAR
)


def test_assembler_reports_progress_and_joins_chunks():
    events = []
    info, data = core.assemble(
        responses(
            pb.EnhanceResponse(progress=pb.Progress(stage="queued", queue_position=2)),
            pb.EnhanceResponse(progress=pb.Progress(stage="enhancing", done=1, total=4)),
            pb.EnhanceResponse(result=HEADER),
            pb.EnhanceResponse(chunk=b"abc"),
            pb.EnhanceResponse(chunk=b"def"),
        ),
        events.append,
    )
    assert info == ImageInfo(2, 1, 3, "u8", "linear") and data == b"abcdef"
    assert events[0].queue_position == 2 and events[1].fraction == 0.25


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        ([], "without a result"),
        ([pb.EnhanceResponse(chunk=b"x")], "before the result header"),
        ([pb.EnhanceResponse(result=HEADER), pb.EnhanceResponse(chunk=b"abcde")], "truncated: 5 of 6"),
        ([pb.EnhanceResponse(result=HEADER), pb.EnhanceResponse(chunk=b"abcdefg")], "more than the 6 bytes"),
        ([pb.EnhanceResponse(result=HEADER), pb.EnhanceResponse(result=HEADER)], "two result headers"),
        ([pb.EnhanceResponse(result=pb.ImageHeader(width=1, height=1, channels=1))], "unknown sample type"),
    ],
)
def test_assembler_refuses_malformed_replies(stream, message):
    with pytest.raises(EnhancerError, match=message) as caught:
        core.assemble(stream, None)
    assert caught.value.kind == "protocol"


@pytest.mark.parametrize(
    ("code", "details", "kind"),
    [
        ("UNAVAILABLE", "connection refused", "unavailable"),
        ("NOT_FOUND", "unknown model", "not_found"),
        ("INVALID_ARGUMENT", "scale", "invalid"),
        ("RESOURCE_EXHAUSTED", "the job queue is full", "queue_full"),
        ("RESOURCE_EXHAUSTED", "the image has 50 megapixels", "too_large"),
        ("CANCELLED", "", "cancelled"),
        ("DEADLINE_EXCEEDED", "Deadline Exceeded", "deadline"),
        ("UNAUTHENTICATED", "token", "unauthenticated"),
        ("UNIMPLEMENTED", "Method not found!", "unsupported"),  # a call older servers lack
        ("INTERNAL", "boom", "internal"),
    ],
)
def test_status_codes_map_to_error_kinds(code, details, kind):
    error = core.error_from_status(code, details)
    assert error.kind == kind and error.code == code and str(error)
    assert details in str(error)


def test_the_protocol_version_says_what_a_server_understands():
    assert wire.PROTOCOL_VERSION == 3 == wire.ESTIMATE_PROTOCOL_VERSION and wire.FACES_PROTOCOL_VERSION == 2
    assert wire.protocol_needed(Options()) == 1
    assert wire.protocol_needed(Options(faces=True)) == 2
    assert wire.protocol_needed(Options(faces=True, faces_only=True, scale=1.0)) == 2


@pytest.mark.parametrize(
    ("options", "server_version", "refused"),
    [
        (Options(faces=True), 1, True),  # a version 1 server would enhance and ignore the faces
        (Options(faces=True, faces_only=True), 1, True),
        (Options(faces=True), 0, True),  # a server from before the version was reported
        (Options(faces=True), 2, False),
        (Options(faces=True), 3, False),
        (Options(), 1, False),  # no faces: any server will do
        (Options(model="m", scale=2.0, strength=0.5), 0, False),
    ],
)
def test_a_face_request_to_a_server_too_old_for_it_is_refused(options, server_version, refused):
    problem = wire.protocol_problem(options, server_version)
    if not refused:
        assert problem is None
        return
    assert problem is not None
    assert "too old for face restoration" in problem and "update it" in problem
    assert f"protocol {server_version}" in problem


@pytest.mark.parametrize(
    ("address", "parts"),
    [
        ("127.0.0.1:50051", ("127.0.0.1", 50051, None)),
        ("[::1]:7", ("::1", 7, None)),
        ("example.org:443", ("example.org", 443, None)),
        ("unix:/run/ie.sock", ("", None, "/run/ie.sock")),
        ("unix:///run/ie.sock", ("", None, "/run/ie.sock")),
    ],
)
def test_addresses_are_split(address, parts):
    assert wire.parse_address(address) == wire.Address(*parts)


@pytest.mark.parametrize("address", ["localhost", "host:port", "", ":50051", "50051", "h:70000", "unix:"])
def test_malformed_addresses_are_refused(address):
    with pytest.raises(wire.AddressError, match="unix:PATH"):
        wire.parse_address(address)
    with pytest.raises(EnhancerError, match="unix:PATH") as refused:
        LiteClient(address)
    assert refused.value.kind == "invalid"


@pytest.mark.parametrize(
    ("address", "local"),
    [("127.0.0.1:1", True), ("127.8.0.1:1", True), ("[::1]:1", True), ("localhost:1", True),
     ("unix:/run/ie.sock", True), ("0.0.0.0:1", False), ("[::]:1", False), ("example.org:1", False)],
)
def test_local_addresses_are_recognised(address, local):
    assert wire.parse_address(address).is_local is local


def test_package_and_client_imports_stay_light():
    # GIMP's Python has neither grpcio nor numpy nor torch.
    code = (
        "import sys, image_enhancer, image_enhancer.client, image_enhancer.client.core, image_enhancer.wire\n"
        "print(sorted({'grpc', 'numpy', 'torch'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_model_descriptions_cross_the_wire_unchanged():
    info = wire.ModelInfo("m", "RRDBNet", 4, True, True, ("fp32", "fp16"), "BSD", "Photo", True, 2.5e6, 0.3)
    assert wire.model_info(pb.ModelInfo.FromString(wire.model_message(info).SerializeToString())) == info
    described = pb.ServerDescription(version="1", device="cpu", max_pixels=40_000_000, default_model="m")
    assert wire.server_info(described) == wire.ServerInfo("1", "cpu", "", 0, 0, 40_000_000, "m", 0)


@pytest.mark.parametrize(
    "options",
    [
        Options(),
        Options(model="m", scale=2.5, strength=0.0, tile=64, alpha_mode="bicubic", colour_fidelity=True),
        Options(model="m", strength=1.0, auto_contrast=0.5),
    ],
)
def test_a_request_crosses_the_wire_unchanged(options):
    image = ImageInfo(3, 2, 4, "f32", "linear")
    sent = pb.EnhanceStart(image=wire.header_message(image), options=wire.options_message(options))
    start = pb.EnhanceStart.FromString(sent.SerializeToString())
    got = wire.image_info(start.image)
    assert got == image
    assert wire.request_options(start.options, got) == dataclasses.replace(options, linear=True)
