"""Backbone weights: a file in $TORCH_HOME/hub/checkpoints is used offline and read with the
weights-only unpickler (a crafted file runs no code and is refused in one line); its SHA-256 is
compared with the prefix in its name (a mismatch is one warning line); a missing file is
downloaded beside its final name and renamed into place only once it loads; a failed download
stops with one line naming the exact file to place."""

import hashlib
import http.server
import io
import pickle
import threading
import types
import urllib.error

import pytest
import torch
import torchvision

import model.backbone as backbone_module
from common.errors import UserError
from model.backbone import backbone_weights_file, build_backbone


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the network must not be used when the file is in place")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def random_resnet18_state_dict() -> dict:
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_()
    return reference.state_dict()


def serialized(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def place(torch_home, content: bytes, backbone: str = "resnet18"):
    target = backbone_weights_file(backbone)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(content)
    return target


def assert_same_weights(model, state_dict):
    for name, tensor in state_dict.items():
        assert torch.equal(model.state_dict()[name], tensor), name


def warning_lines(capsys) -> list:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


class WritesMarker:
    """Unpickling this runs code: it writes `marker` (what a crafted weights file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


def test_weights_file_is_torchvisions_v1_file(torch_home):
    path = backbone_weights_file("wide_resnet50_2")
    assert path == torch_home / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth"
    assert backbone_weights_file("resnet18").name == "resnet18-f37072fd.pth"


def test_cached_weights_file_is_used_without_network(torch_home, no_network):
    reference = random_resnet18_state_dict()
    place(torch_home, serialized(reference))
    loaded = build_backbone("resnet18", pretrained=True)
    assert_same_weights(loaded, reference)


def test_failed_download_names_the_file_to_place(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as error:
        build_backbone("wide_resnet50_2", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert str(torch_home / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth") in message
    assert "pretrained=false" in message
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []  # no partial file left behind


def test_random_weights_only_when_asked(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("no download expected"))
    model = build_backbone("resnet18", pretrained=False)
    assert isinstance(model, torchvision.models.ResNet)


# --- a file in place: refused, damaged, not fitting, or not the file its name promises ---


@pytest.mark.parametrize("file_format", ["torch_zip", "torch_legacy", "plain_pickle"])
def test_crafted_pickle_is_refused_and_runs_no_code(torch_home, tmp_path, no_network, file_format):
    marker = tmp_path / "code_ran"
    payload = {"conv1.weight": WritesMarker(marker)}
    if file_format == "torch_zip":
        content = serialized(payload)
    elif file_format == "torch_legacy":
        buffer = io.BytesIO()
        torch.save(payload, buffer, _use_new_zipfile_serialization=False)
        content = buffer.getvalue()
    else:
        content = pickle.dumps(payload)
    target = place(torch_home, content)

    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    assert not marker.exists(), "the crafted file ran code"
    message = str(error.value)
    assert "\n" not in message
    assert str(target) in message and "refused" in message
    assert target.exists()  # the user's file is reported, not deleted

    # The payload is live: an unrestricted unpickler does run it.
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(WritesMarker(control)))
    assert control.exists()


@pytest.mark.parametrize("cut", ["empty", "header_only", "half"])
def test_truncated_file_names_the_file(torch_home, no_network, cut):
    content = serialized(random_resnet18_state_dict())
    length = {"empty": 0, "header_only": 100, "half": len(content) // 2}[cut]
    target = place(torch_home, content[:length])
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert str(target) in message and "damaged or truncated" in message


def test_state_dict_of_another_architecture_is_refused(torch_home, no_network):
    target = place(torch_home, serialized(torchvision.models.resnet34(weights=None).state_dict()))
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert str(target) in message and "does not fit ResNet" in message and "unexpected" in message


def test_state_dict_with_a_misshaped_tensor_is_refused(torch_home, no_network):
    state_dict = random_resnet18_state_dict()
    state_dict["fc.weight"] = torch.zeros(10, 512)
    target = place(torch_home, serialized(state_dict))
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert str(target) in message and "mis-shaped" in message and "fc.weight" in message


def test_file_that_is_not_a_state_dict_is_refused(torch_home, no_network):
    target = place(torch_home, serialized([torch.zeros(3)]))
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    assert str(target) in str(error.value) and "not a state dict" in str(error.value)


def test_hash_prefix_mismatch_warns_once_and_loads(torch_home, no_network, capsys):
    reference = random_resnet18_state_dict()
    content = serialized(reference)
    assert not hashlib.sha256(content).hexdigest().startswith("f37072fd")  # random weights: not the real file
    target = place(torch_home, content)
    loaded = build_backbone("resnet18", pretrained=True)
    assert_same_weights(loaded, reference)
    warnings = warning_lines(capsys)
    assert len(warnings) == 1
    assert str(target) in warnings[0] and "f37072fd" in warnings[0]


# --- downloads from a local HTTP server ---


class WeightsServer:
    """http.server on 127.0.0.1 in a thread; `mode` says how it answers a GET."""

    def __init__(self, content: bytes, mode: str):
        self.content, self.mode, self.requests = content, mode, 0
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                if server.mode == "missing":
                    self.send_error(404)
                    return
                if server.mode == "stall":
                    server.release.wait(10)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.content)))
                self.end_headers()
                if server.mode == "drop":  # half the body, then the connection goes away
                    self.wfile.write(server.content[: len(server.content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(server.content)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, filename: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/weights/{filename}"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(monkeypatch):
    """Serve `content` as resnet18's weights file `filename`: the weights URL points at the server."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    servers = []

    def start(content: bytes, filename: str, mode: str = "ok") -> WeightsServer:
        server = WeightsServer(content, mode)
        servers.append(server)
        monkeypatch.setattr(backbone_module, "backbone_weights", lambda name: types.SimpleNamespace(url=server.url(filename)))
        return server

    yield start
    for server in servers:
        server.stop()


def test_download_lands_atomically_at_the_final_path_and_loads(torch_home, serve, monkeypatch, capsys):
    reference = random_resnet18_state_dict()
    content = serialized(reference)
    filename = f"resnet18-{hashlib.sha256(content).hexdigest()[:8]}.pth"  # a name whose hash prefix matches
    server = serve(content, filename)
    downloads = []
    real_download = torch.hub.download_url_to_file

    def recording_download(url, dst, *args, **kwargs):
        downloads.append(dst)
        assert kwargs.get("hash_prefix") is None
        return real_download(url, dst, *args, **kwargs)

    monkeypatch.setattr(torch.hub, "download_url_to_file", recording_download)
    target = torch_home / "hub" / "checkpoints" / filename
    assert backbone_weights_file("resnet18") == target

    loaded = build_backbone("resnet18", pretrained=True)
    assert_same_weights(loaded, reference)
    assert server.requests == 1
    assert len(downloads) == 1 and downloads[0] != str(target)  # written under another name first
    assert downloads[0].startswith(str(target.parent))  # beside it, so the rename is atomic
    assert sorted(path.name for path in target.parent.iterdir()) == [filename]
    assert target.read_bytes() == content
    assert warning_lines(capsys) == []  # the hash prefix matches

    again = build_backbone("resnet18", pretrained=True)  # now from the cached file
    assert_same_weights(again, reference)
    assert server.requests == 1


def test_download_with_wrong_hash_prefix_warns_once_and_loads(torch_home, serve, capsys):
    reference = random_resnet18_state_dict()
    serve(serialized(reference), "resnet18-00000000.pth")
    loaded = build_backbone("resnet18", pretrained=True)
    assert_same_weights(loaded, reference)
    warnings = warning_lines(capsys)
    assert len(warnings) == 1 and "resnet18-00000000.pth" in warnings[0]
    assert (torch_home / "hub" / "checkpoints" / "resnet18-00000000.pth").exists()


@pytest.mark.parametrize("mode", ["drop", "missing"])
def test_failed_download_leaves_no_file_under_the_final_name(torch_home, serve, mode):
    content = serialized(random_resnet18_state_dict())
    filename = f"resnet18-{hashlib.sha256(content).hexdigest()[:8]}.pth"
    serve(content, filename, mode)
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    message = str(error.value)
    target = torch_home / "hub" / "checkpoints" / filename
    assert "\n" not in message
    assert str(target) in message and "pretrained=false" in message
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no partial file either


def test_crafted_download_runs_no_code_and_is_not_kept(torch_home, tmp_path, serve):
    marker = tmp_path / "code_ran"
    serve(serialized({"conv1.weight": WritesMarker(marker)}), "resnet18-00000000.pth")
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    assert not marker.exists()
    assert "refused" in str(error.value) and "\n" not in str(error.value)
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []


def test_stalled_download_times_out(torch_home, serve, monkeypatch):
    monkeypatch.setattr(backbone_module, "DOWNLOAD_TIMEOUT_S", 0.5)
    serve(b"", "resnet18-00000000.pth", "stall")
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", pretrained=True)
    assert "timeout" in str(error.value).lower()
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []
