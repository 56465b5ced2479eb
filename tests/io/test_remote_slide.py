"""Slides under an fsspec URL: a local HTTP server (127.0.0.1 only) serves the files with range requests."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mammopath.io.location import display, is_url, join
from mammopath.io.slide import open_slide
from mammopath.synth.patho import write_pyramid_tiff


@dataclass
class Server:
    """A static file server with HTTP range requests, recording every request it answers."""

    root: Path
    url: str = ""
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, bytes sent)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, name: str) -> list[int]:
        """Bytes sent by every GET of ``name`` so far."""
        with self.lock:
            return [n for method, path, n in self.requests if method == "GET" and path.endswith(name)]


def _handler(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def _file(self) -> Path | None:
            target = (server.root / self.path.lstrip("/").split("?")[0]).resolve()
            inside = target == server.root or server.root in target.parents
            return target if inside and target.is_file() else None

        def _send(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)
            with server.lock:
                server.requests.append((self.command, self.path, len(body)))

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = self._file()
            if path is None:
                self._send(404, {"Content-Length": "0"})
                return
            data = path.read_bytes()
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if not match:
                self._send(200, {"Content-Length": str(len(data)), "Accept-Ranges": "bytes"}, data)
                return
            start = int(match.group(1))
            end = min(int(match.group(2)) if match.group(2) else len(data) - 1, len(data) - 1)
            body = data[start : end + 1]
            headers = {"Content-Length": str(len(body)), "Content-Range": f"bytes {start}-{end}/{len(data)}"}
            self._send(206, {**headers, "Accept-Ranges": "bytes"}, body)

    return Handler


@pytest.fixture
def http(tmp_path: Path) -> Iterator[Server]:
    """The server, bound to 127.0.0.1 only, started for the test and stopped after it."""
    server = Server(tmp_path.resolve())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    httpd.daemon_threads = True
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def noise_slide(path: Path, size: int = 2048, tile: int = 256) -> Path:
    """A slide of incompressible tiles (each JPEG tile ~tens of KiB), so reads cannot hide in one block."""
    rgb = (np.random.default_rng(0).random((size, size, 3)) * 255).astype(np.uint8)
    return write_pyramid_tiff(path, rgb, mpp=0.25, tile=tile, quality=85)


def test_locations() -> None:
    assert is_url("s3://bucket/slides") and is_url("http://h/x") and not is_url("/data") and not is_url("file:///x")
    assert join("s3://bucket/root", "a/b.tif") == "s3://bucket/root/a/b.tif"
    assert join("https://h:8/r/?sig=1", "x.tif") == "https://h:8/r/x.tif?sig=1"
    assert display("https://user:secret@h:8/r/x.tif?X-Amz-Signature=abc") == "https://h:8/r/x.tif"


SMALL_CACHE = {"block_size": 64 * 1024, "cache_type": "blockcache", "cache_options": {"maxblocks": 4}}


@pytest.mark.parametrize("options", [None, SMALL_CACHE], ids=["default", "cache-smaller-than-a-patch"])
def test_remote_slide_reads_the_same_bytes_with_few_range_requests(http: Server, options: dict | None) -> None:
    path = noise_slide(http.root / "slide.tif")
    url = f"{http.url}/slide.tif"
    local, remote = open_slide(path), open_slide(url, storage_options=options)
    assert remote.dimensions == local.dimensions and remote.level_dimensions == local.level_dimensions
    assert remote.mpp == local.mpp == pytest.approx(0.25) and remote.mpp_source == local.mpp_source
    assert 1 <= len(http.gets("slide.tif")) <= 12  # header and IFDs: a few block reads, not the whole file
    block = (options or {}).get("block_size", 256 * 1024)
    rng = np.random.default_rng(1)
    per_read: list[int] = []
    for x, y in rng.integers(0, 2048 - 256, (25, 2)):
        for mpp in (None, 0.5):  # level 0, and level 1 chosen from the resolution
            before = len(http.gets("slide.tif"))
            a = local.read_region((int(x), int(y)), 224, mpp=mpp)
            b = remote.read_region((int(x), int(y)), 224, mpp=mpp)
            np.testing.assert_array_equal(a, b)  # the same bytes decode to the same pixels
            gets = http.gets("slide.tif")[before:]
            assert all(n <= block for n in gets)  # ranges of one block, never the whole file
            per_read.append(len(gets))
    # a 224-px patch touches at most 4 of the 256-px tiles of a level, a tile at most 2 blocks
    assert max(per_read) <= 8, per_read
    if options is SMALL_CACHE:  # the cache cannot hold the slide: the bound comes from the tiles, not from caching
        assert sum(per_read) > len(per_read)
    edge = remote.read_region((2000, 2000), 96)  # padding past the edge works remotely too
    np.testing.assert_array_equal(edge, local.read_region((2000, 2000), 96))


def test_missing_remote_slide_names_it_without_credentials(http: Server) -> None:
    from mammopath.errors import SlideReadError

    with pytest.raises(SlideReadError, match=r"http://127\.0\.0\.1:\d+/nope\.tif") as info:
        open_slide(f"http://user:secret@{http.url.removeprefix('http://')}/nope.tif?token=abc")
    assert "secret" not in str(info.value) and "token" not in str(info.value)


def test_a_url_data_root_trains_like_the_local_one(http: Server, synth_root: Path, tmp_path: Path) -> None:
    import shutil

    from mammopath.datamodules.crossmodal import CrossModalDataModule

    shutil.copytree(synth_root / "patho", http.root / "patho")
    manifest = pd.read_csv(synth_root / "manifest.csv")
    patho = manifest[manifest["modality"] == "patho"]
    patho.to_csv(tmp_path / "patho.csv", index=False)
    kwargs = {"modalities": ["patho"], "image_size": 32, "batch_size": 8, "augment": False, "num_workers": 2}
    local = CrossModalDataModule(str(tmp_path / "patho.csv"), root=str(http.root), **kwargs)
    remote = CrossModalDataModule(str(tmp_path / "patho.csv"), root=f"{http.url}/", **kwargs)
    for dm in (local, remote):
        dm.setup("test")  # validation checks every slide exists: one metadata request per distinct file
    heads = [p for method, p, _ in http.requests if method == "HEAD"]
    assert len(heads) <= 2 * patho["path"].nunique() + 2 * patho["roi_path"].nunique()
    tumour = 0.0
    loaders = [iter(dm.test_dataloader()[0]) for dm in (local, remote)]  # forked workers read remotely
    for _ in range(4):  # the first batches, until one holds tumour pixels (the masks are read remotely too)
        a, b = (next(loader) for loader in loaders)
        assert a["sample_id"] == b["sample_id"]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
        tumour += float(a["mask"].sum())
        if tumour > 0:
            break
    assert tumour > 0
