"""One bad file in the models folder never breaks the other models.

Each kind of bad file (a `.pth` with integer keys, a truncated safetensors, a pair file nested deep or
1 GB big, a name with a newline or control characters, a folder, a dangling link or a FIFO named like a
model, an unreadable file) is listed as broken with its reason, by the store, the `models` command and
ListModels over gRPC, while a good model beside it keeps working in the CLI and in a running server,
also when the bad file is dropped in while the server runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact

from image_enhancer.cli import main
from image_enhancer.engine.enhancer import Enhancer
from image_enhancer.server.app import serve
from image_enhancer.v1 import enhancer_pb2 as pb
from image_enhancer.v1 import enhancer_pb2_grpc
from image_enhancer.weights.pairs import PAIR_SUFFIX
from image_enhancer.weights.safe_load import WeightsError
from image_enhancer.weights.store import ModelStore
from image_enhancer.wire import ImageInfo, header_message

GOOD = "good"


def _save_good(path: Path) -> None:
    torch.manual_seed(7)
    network = Compact(num_feat=8, num_conv=2, upscale=2)
    save_file({k: v.contiguous() for k, v in network.state_dict().items()}, path)


def _integer_keys(folder: Path) -> None:
    torch.save({0: torch.zeros(2), 1: torch.ones(3)}, folder / "intkeys.pth")


def _nested_integer_keys(folder: Path) -> None:
    torch.save({"params_ema": {0: torch.zeros(2)}}, folder / "intkeys.pth")


def _truncated(folder: Path) -> None:
    _save_good(folder / "whole.safetensors")
    data = (folder / "whole.safetensors").read_bytes()
    (folder / "whole.safetensors").unlink()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])


def _deep_pair(folder: Path) -> None:
    # 60,000 bytes: within the size bound, so the nesting bound refuses it.
    (folder / f"deep{PAIR_SUFFIX}").write_text("[" * 30_000 + "]" * 30_000)


def _deeper_pair(folder: Path) -> None:
    (folder / f"deep{PAIR_SUFFIX}").write_text('{"faithful": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _huge_pair(folder: Path) -> None:
    with open(folder / f"huge{PAIR_SUFFIX}", "wb") as f:
        f.truncate(1 << 30)  # 1 GB, sparse: costs no disk, and is never read


def _newline_name(folder: Path) -> None:
    _save_good(folder / "bad\nname.safetensors")


def _escape_name(folder: Path) -> None:
    _save_good(folder / "red\x1b[31m.pth")


def _undecodable_name(folder: Path) -> None:
    _save_good(folder / "x\udcff.pth")  # the byte 0xff, which no UTF-8 name holds


def _folder(folder: Path) -> None:
    (folder / "adir.safetensors").mkdir()


def _dangling(folder: Path) -> None:
    (folder / "dangling.pth").symlink_to(folder / "gone.pth")


def _link_loop(folder: Path) -> None:
    (folder / "loop.pth").symlink_to(folder / "loop.pth")  # cannot be opened, even by root


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "fifo.pth")


def _unreadable(folder: Path) -> None:
    _save_good(folder / "locked.safetensors")
    (folder / "locked.safetensors").chmod(0)


def _pair_of_a_missing_model(folder: Path) -> None:
    (folder / f"orphan{PAIR_SUFFIX}").write_text(f'{{"faithful": "{GOOD}", "sharp": "gone\\nmodel"}}')


def _not_a_dictionary(folder: Path) -> None:
    torch.save([torch.zeros(2)], folder / "alist.pt")


# (name of the case, how the bad file is made, the broken entry's file, a phrase of its reason)
BAD_FILES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("integer-keys", _integer_keys, "intkeys.pth", "keys that are not tensor names"),
    ("nested-integer-keys", _nested_integer_keys, "intkeys.pth", "not tensors"),
    ("truncated-safetensors", _truncated, "truncated.safetensors", "truncated or corrupt"),
    ("deep-pair", _deep_pair, f"deep{PAIR_SUFFIX}", "nested 30000 levels deep"),
    ("deep-big-pair", _deeper_pair, f"deep{PAIR_SUFFIX}", "at most 65536 are read"),
    ("1GB-pair", _huge_pair, f"huge{PAIR_SUFFIX}", "1073741824 bytes"),
    ("newline-name", _newline_name, repr("bad\nname.safetensors"), "control or invisible characters"),
    ("escape-name", _escape_name, repr("red\x1b[31m.pth"), "control or invisible characters"),
    ("undecodable-name", _undecodable_name, repr("x\udcff.pth"), "control or invisible characters"),
    ("folder", _folder, "adir.safetensors", "a folder"),
    ("dangling-link", _dangling, "dangling.pth", "a link to a file that does not exist"),
    ("link-loop", _link_loop, "loop.pth", "cannot be read (Too many levels of symbolic links)"),
    ("fifo", _fifo, "fifo.pth", "not a regular file"),
    ("unreadable", _unreadable, "locked.safetensors", "permission denied"),
    ("pair-of-a-missing-model", _pair_of_a_missing_model, f"orphan{PAIR_SUFFIX}",
     "'gone\\nmodel' is not a model"),
    ("not-a-dictionary", _not_a_dictionary, "alist.pt", "not a dictionary"),
]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    models = tmp_path / "models"
    models.mkdir()
    _save_good(models / f"{GOOD}.safetensors")
    return models


@pytest.mark.parametrize(("make", "file", "reason"), [case[1:] for case in BAD_FILES],
                         ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_listed_as_broken_and_the_good_model_works(folder, make, file, reason):
    if make is _unreadable and os.geteuid() == 0:
        pytest.skip("root reads every file")
    make(folder)
    store = ModelStore(models_dir=folder)
    assert GOOD in {m.name for m in store.list()}
    assert store.get(GOOD).descriptor.scale == 2
    survey = store.survey()
    broken = {b.file: b for b in survey.broken}
    assert file in broken, survey.broken
    assert reason in broken[file].reason
    assert "\n" not in broken[file].reason and "\n" not in broken[file].name
    assert [m.name for m in store.list()] == [m.name for m in survey.models]


def test_a_broken_file_fails_fast_with_its_reason(folder):
    _integer_keys(folder)
    store = ModelStore(models_dir=folder)
    for _ in range(2):  # also once it is known to be broken
        with pytest.raises(WeightsError, match="keys that are not tensor names"):
            store.get("intkeys")


def _poison(folder: Path) -> None:
    """A folder with one bad file of each kind that can sit together."""
    _integer_keys(folder)
    _deep_pair(folder)
    _newline_name(folder)
    _dangling(folder)
    _fifo(folder)


def test_the_models_command_lists_good_models_and_broken_files_on_unsplit_lines(
    folder, monkeypatch, capsys
):
    _poison(folder)
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(folder.parent))
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert any(line.startswith(f"{GOOD} ") for line in lines)
    assert "  intkeys.pth: keys that are not tensor names: 0, 1" in lines
    assert f"  deep{PAIR_SUFFIX}: not a pair file (nested 30000 levels deep" in out
    assert "  'bad\\nname.safetensors': its name holds control or invisible characters" in out
    # The newline in the file name is shown escaped: no line starts with what follows it.
    assert not any(line.startswith("name.safetensors") for line in lines)


def test_enhance_with_a_good_model_beside_bad_files(folder, tmp_path, monkeypatch, capsys):
    _poison(folder)
    monkeypatch.setenv("IMAGE_ENHANCER_HOME", str(folder.parent))
    source, result = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(source)
    on_cpu = ["--device", "cpu", "--runtime", "pytorch"]
    assert main(["enhance", str(source), "-o", str(result), "-m", GOOD, *on_cpu]) == 0
    with Image.open(result) as image:
        assert image.size == (24, 20)
    assert main(["enhance", str(source), "-o", str(tmp_path / "no.png"), "-m", "intkeys"]) == 1
    assert "keys that are not tensor names" in capsys.readouterr().err
    assert not (tmp_path / "no.png").exists()


# --- a running server ------------------------------------------------------------------------------------


def _enhance(stub: enhancer_pb2_grpc.EnhancerStub, model: str) -> tuple[grpc.StatusCode, str, bytes]:
    pixels = np.random.default_rng(1).integers(0, 256, (6, 8, 3), dtype=np.uint8).tobytes()
    start = pb.EnhanceStart(
        image=header_message(ImageInfo(8, 6, 3, "u8")), options=pb.EnhanceOptions(model=model)
    )
    requests = [pb.EnhanceRequest(start=start), pb.EnhanceRequest(chunk=pixels)]
    result = b""
    try:
        for response in stub.Enhance(iter(requests), timeout=120):
            if response.WhichOneof("message") == "chunk":
                result += response.chunk
    except grpc.RpcError as error:
        return error.code(), error.details(), b""
    return grpc.StatusCode.OK, "", result


@pytest.fixture()
def server(folder):
    _poison(folder)
    running = serve(Enhancer(ModelStore(models_dir=folder), device="cpu"), "127.0.0.1:0", warm_up=[])
    assert running.wait_until_ready(60)
    with grpc.insecure_channel(running.address) as channel:
        yield enhancer_pb2_grpc.EnhancerStub(channel), health_pb2_grpc.HealthStub(channel)
    running.stop()


def _listing(stub: enhancer_pb2_grpc.EnhancerStub) -> tuple[set[str], dict[str, str]]:
    response = stub.ListModels(pb.ListModelsRequest(), timeout=60)
    from image_enhancer.wire import broken_model  # imported here: the old code fails on the call above

    broken = [broken_model(b) for b in response.broken_models]
    return {m.name for m in response.models}, {b.file: b.reason for b in broken}


def test_a_running_server_serves_good_models_and_names_the_broken_ones(server, folder):
    stub, health = server
    names, broken = _listing(stub)
    assert GOOD in names and "intkeys" not in names
    assert broken["intkeys.pth"] == "keys that are not tensor names: 0, 1"
    assert "nested 30000 levels deep" in broken[f"deep{PAIR_SUFFIX}"]
    assert "control or invisible characters" in broken[repr("bad\nname.safetensors")]
    code, _, result = _enhance(stub, GOOD)
    assert code == grpc.StatusCode.OK and len(result) == 12 * 16 * 3
    code, message, _ = _enhance(stub, "intkeys")
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "intkeys.pth" in message and "keys that are not tensor names" in message
    code, message, _ = _enhance(stub, "deep")
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "nested 30000 levels deep" in message
    code, message, _ = _enhance(stub, "bad\nname")
    assert code in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)
    assert "control or invisible characters" in message
    serving = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert serving.status == health_pb2.HealthCheckResponse.SERVING


def test_a_bad_file_dropped_in_while_the_server_runs_breaks_nothing(server, folder):
    stub, _ = server
    assert _enhance(stub, GOOD)[0] == grpc.StatusCode.OK
    torch.save({7: torch.zeros(1)}, folder / "late.pth")
    (folder / f"late-pair{PAIR_SUFFIX}").write_text("{" * 20_000)
    _save_good(folder / "late-good.safetensors")
    names, broken = _listing(stub)
    assert {GOOD, "late-good"} <= names
    assert "late.pth" in broken and f"late-pair{PAIR_SUFFIX}" in broken
    for model in (GOOD, "late-good"):
        assert _enhance(stub, model)[0] == grpc.StatusCode.OK
    assert _enhance(stub, "late")[0] == grpc.StatusCode.FAILED_PRECONDITION
