"""Tests of the in-process fake Hub (tests/fake_hub.py) against the real huggingface_hub client.

``HF_ENDPOINT`` is read when huggingface_hub is imported, so every client call runs in a subprocess whose
environment points at the fake Hub.
"""

from __future__ import annotations

import json
import struct
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fake_hub import FakeHub, git_blob_oid, run_client

README = "---\nlicense: apache-2.0\ntags:\n- ocr\n---\n# Demo\n\nA tiny test repo.\n"
CONFIG = {"hidden_size": 8, "character": "0123456789abcdefghijklmnopqrstuvwxyz"}
BINARY = bytes(range(256)) * 40 + b"\x00\xff\x00"


def _check(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"client failed:\nSTDOUT:\n{result.stdout}\nSTDERR:\n{result.stderr}"
    return result.stdout


def _make_folder(folder: Path) -> dict[str, bytes]:
    folder.mkdir()
    (folder / "README.md").write_text(README)
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    (folder / "weights.bin").write_bytes(BINARY)
    return {path.name: path.read_bytes() for path in folder.iterdir()}


@pytest.mark.parametrize("xet", ["pipelined", "disabled"])
def test_upload_folder_then_snapshot_download(tmp_path: Path, xet: str) -> None:
    folder = tmp_path / "to_upload"
    originals = _make_folder(folder)
    extra_env = {"HF_HUB_DISABLE_XET": "1"} if xet == "disabled" else {}
    upload = f"""
        from huggingface_hub import HfApi
        api = HfApi()
        print("URL", api.create_repo("acme/demo", exist_ok=True, private=True, token="hf_fake"))
        print("URL", api.create_repo("acme/demo", exist_ok=True, private=True, token="hf_fake"))  # 409 tolerated
        info = api.upload_folder(repo_id="acme/demo", folder_path={str(folder)!r}, token="hf_fake",
                                 commit_message="Upload demo")
        print("OID", info.oid)
    """
    with FakeHub() as hub:
        out = _check(run_client(hub, upload, tmp_path / "home_up", extra_env))
        oid = out.split("OID ")[1].split()[0]

        assert f"URL {hub.endpoint}/acme/demo" in out
        assert hub.repos["acme/demo"] == originals  # byte for byte
        assert hub.commits == [("acme/demo", "Upload demo", sorted(originals))]
        assert hub.head("acme/demo") == oid and len(oid) == 40
        assert hub.unhandled == [] and hub.errors == []
        posts = [path for method, path in hub.requests if method == "POST"]
        expected = ["/api/repos/create", "/api/repos/create", "/api/validate-yaml"]
        if xet == "disabled":  # create_commit validates README.md again
            expected.append("/api/validate-yaml")
        assert posts == [*expected, "/api/models/acme/demo/preupload/main", "/api/models/acme/demo/commit/main"]

        download = """
            import json, os
            from huggingface_hub import hf_hub_download, snapshot_download
            from huggingface_hub.errors import EntryNotFoundError
            path = snapshot_download("acme/demo", token="hf_fake")
            print(json.dumps({"path": path, "files": sorted(os.listdir(path))}))
            try:
                hf_hub_download("acme/demo", "missing.txt", token="hf_fake")
            except EntryNotFoundError as err:
                print("MISSING", type(err).__name__)
        """
        hub.requests.clear()
        out = _check(run_client(hub, download, tmp_path / "home_down"))
        listing = json.loads(out.splitlines()[0])
        assert listing["files"] == sorted(originals)
        snapshot = Path(listing["path"])
        assert snapshot.name == oid
        assert snapshot.is_relative_to(tmp_path / "home_down")
        assert {name: (snapshot / name).read_bytes() for name in originals} == originals
        assert "MISSING RemoteEntryNotFoundError" in out
        assert ("GET", "/api/models/acme/demo/revision/main") in hub.requests
        assert ("GET", f"/api/models/acme/demo/tree/{oid}") in hub.requests
        assert hub.unhandled == [] and hub.errors == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        pytest.param(
            'HfApi().create_repo("acme/new", exist_ok=True)',
            ["HfHubHTTPError", "401", "Authorization: Bearer"],
            id="create_repo-without-token",
        ),
        pytest.param(
            'HfApi().upload_folder(repo_id="acme/existing", folder_path=FOLDER)',
            ["HfHubHTTPError", "401", "Authorization: Bearer"],
            id="upload-without-token",
        ),
        pytest.param(
            'HfApi(token="hf_fake").create_repo("acme/secret", exist_ok=True)',
            ["HfHubHTTPError", "403 Forbidden", "acme/secret"],
            id="create_repo-forbidden",
        ),
        pytest.param(
            'HfApi(token="hf_fake").upload_folder(repo_id="acme/secret", folder_path=FOLDER)',
            ["HfHubHTTPError", "403 Forbidden", "acme/secret"],
            id="upload-forbidden",
        ),
    ],
)
def test_auth_errors_are_clear(tmp_path: Path, code: str, expected: list[str]) -> None:
    folder = tmp_path / "to_upload"
    originals = _make_folder(folder)
    client = f"from huggingface_hub import HfApi\nFOLDER = {str(folder)!r}\n{code}\n"
    with FakeHub(forbidden={"acme/secret"}) as hub:
        hub.create_repo("acme/existing")
        hub.create_repo("acme/secret", files=originals)
        result = run_client(hub, client, tmp_path / "home")
        assert result.returncode != 0, result.stdout
        for fragment in expected:
            assert fragment in result.stderr, f"{fragment!r} not in stderr:\n{result.stderr}"
        assert hub.commits == [("acme/secret", "Add files (FakeHub seed)", sorted(originals))]
        assert "acme/new" not in hub.repos
        assert hub.repos["acme/existing"] == {}


def test_pytorch_model_hub_mixin_push_and_load(tmp_path: Path) -> None:
    code = """
        import torch
        from torch import nn
        from huggingface_hub import PyTorchModelHubMixin

        class Tiny(nn.Module, PyTorchModelHubMixin):
            def __init__(self, in_features: int = 4, out_features: int = 2):
                super().__init__()
                self.linear = nn.Linear(in_features, out_features)

        torch.manual_seed(0)
        model = Tiny(in_features=3)
        model.push_to_hub("acme/tiny", token="hf_fake")
        loaded = Tiny.from_pretrained("acme/tiny", token="hf_fake", strict=True)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
        print("ROUNDTRIP OK", loaded.linear.in_features)
    """
    with FakeHub() as hub:
        out = _check(run_client(hub, code, tmp_path / "home"))
        assert "ROUNDTRIP OK 3" in out
        files = hub.repos["acme/tiny"]
        assert set(files) == {"model.safetensors", "config.json", "README.md"}
        assert json.loads(files["config.json"]) == {"in_features": 3, "out_features": 2}
        assert files["README.md"].startswith(b"---\n") and b"pytorch_model_hub_mixin" in files["README.md"]
        (header_len,) = struct.unpack("<Q", files["model.safetensors"][:8])
        header = json.loads(files["model.safetensors"][8 : 8 + header_len])
        assert header["linear.weight"]["shape"] == [2, 3] and header["linear.bias"]["shape"] == [2]
        assert [(repo, paths) for repo, _, paths in hub.commits] == [("acme/tiny", sorted(files))]
        assert ("POST", "/api/models/acme/tiny/commit/main") in hub.requests
        assert hub.unhandled == [] and hub.errors == []


def _request(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_raw_endpoints() -> None:
    with FakeHub() as hub:
        oid = hub.create_repo("acme/raw", files={"a/b.txt": b"hello", "c.json": b"{}"})

        status, headers, body = _request(f"{hub.endpoint}/acme/raw/resolve/main/a/b.txt", method="HEAD")
        assert status == 200 and body == b""
        assert headers["X-Repo-Commit"] == oid
        assert headers["ETag"] == f'"{git_blob_oid(b"hello")}"'
        assert headers["Content-Length"] == "5"
        assert _request(f"{hub.endpoint}/acme/raw/resolve/{oid}/a/b.txt", headers={"Range": "bytes=1-"})[2] == b"ello"

        status, headers, _ = _request(f"{hub.endpoint}/acme/raw/resolve/main/nope.txt")
        assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
        status, headers, _ = _request(f"{hub.endpoint}/acme/missing/resolve/main/c.json", method="HEAD")
        assert (status, headers["X-Error-Code"]) == (404, "RepoNotFound")

        _, _, body = _request(f"{hub.endpoint}/api/models/acme/raw/tree/main?recursive=true")
        assert [(e["type"], e["path"]) for e in json.loads(body)] == [
            ("directory", "a"),
            ("file", "a/b.txt"),
            ("file", "c.json"),
        ]
        _, _, body = _request(f"{hub.endpoint}/api/models/acme/raw/tree/main")
        assert [e["path"] for e in json.loads(body)] == ["a", "c.json"]
        _, _, body = _request(f"{hub.endpoint}/api/models/acme/raw/revision/main")
        assert json.loads(body)["siblings"] == [{"rfilename": "a/b.txt"}, {"rfilename": "c.json"}]

        assert _request(f"{hub.endpoint}/api/models/acme/raw/commit/main", method="POST")[0] == 401
        assert _request(f"{hub.endpoint}/api/agent-harnesses")[0] == 404
        status, _, body = _request(f"{hub.endpoint}/api/whoami-v2")
        assert status == 404 and "no route" in json.loads(body)["error"]
        assert hub.unhandled == [("GET", "/api/whoami-v2")] and hub.errors == []
