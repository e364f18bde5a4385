"""Images in chat requests (OpenAI `image_url` parts): where a server may read them from, and reading them.

    policy = ImagePolicy.from_config(cfg)         # tunesmith deploy --image-root, --allow-remote-images, ...
    image = read_image(url, policy)                # a PIL image, or ImageRefused naming what is wrong

Sources, from the safest:
- `data:image/...;base64,...`: the caller sent the bytes; always read (bounded by --max-body-bytes and
  --image-max-bytes).
- local files, `file:///abs/path` or a path relative to --image-root: only with --image-root and only inside it
  (symlinks resolved first), so a caller cannot read the model's weights, keys or /etc.
- `http(s)://` URLs: only with --allow-remote-images. The host must resolve to public addresses only (private,
  loopback, link-local, multicast and reserved ones are refused: a caller must not make the server probe its own
  network), unless the operator names it in --remote-image-hosts. The server connects to the very address it
  checked (no second lookup a DNS rebinding could change), follows no redirect, ignores proxy settings, and stops
  at --image-max-bytes or --image-timeout seconds, whichever comes first.
Reading is blocking: the server runs it in a worker thread (chat.py).
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_PIXELS = 64_000_000  # larger images are refused before they are decoded (a small PNG can claim 100k x 100k)


class ImageRefused(Exception):
    """The image cannot be used; the message says why and what to send instead (the server answers 400)."""


@dataclass(frozen=True)
class ImagePolicy:
    root: Path | None = None  # local files only inside it; None: none
    allow_remote: bool = False
    remote_hosts: frozenset[str] = frozenset()  # allowed at private addresses too
    max_bytes: int = 10_000_000
    timeout_s: float = 10.0

    @classmethod
    def from_config(cls, cfg: Any) -> ImagePolicy:
        root = Path(cfg.image_root).expanduser().resolve() if cfg.image_root else None
        return cls(root, cfg.allow_remote_images, frozenset(h.lower().strip("[]") for h in cfg.remote_image_hosts),
                   cfg.image_max_bytes, cfg.image_timeout)


def read_image(url: str, policy: ImagePolicy) -> Any:
    """The image an image_url names, as an RGB PIL image."""
    return decode(read_bytes(url, policy), policy)


def read_bytes(url: str, policy: ImagePolicy) -> bytes:
    scheme = urllib.parse.urlsplit(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme == "data":
        return _data_uri(url, policy)
    if scheme in ("http", "https"):
        if not policy.allow_remote:
            raise ImageRefused("remote image URLs are off on this server; send the image as a data: URI "
                               "(data:image/png;base64,...), or start the server with --allow-remote-images")
        return fetch(url, policy)
    if scheme in ("file", ""):
        return _local(url, policy)
    raise ImageRefused(f"{scheme}: URLs are not read; send a data: URI, an http(s) URL or a file under the server's "
                       "--image-root")


def decode(data: bytes, policy: ImagePolicy) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise ImageRefused(f"{image.width}x{image.height} pixels is more than this server decodes "
                               f"({MAX_PIXELS:,} pixels); send a smaller image")
        image.load()
    except UnidentifiedImageError:
        raise ImageRefused("not an image this server can read; send PNG, JPEG, GIF or WebP bytes") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise ImageRefused(f"not a readable image ({type(err).__name__}: {err}); send PNG, JPEG, GIF or WebP "
                           "bytes") from None
    return image.convert("RGB")


# -----------------------------------------------------------------------------
# data: URIs and local files


def _data_uri(url: str, policy: ImagePolicy) -> bytes:
    head, comma, payload = url.partition(",")
    if not comma:
        raise ImageRefused("a data: URI needs a comma before its data (data:image/png;base64,...)")
    media = head[5:].split(";")
    if media[0] and not media[0].lower().startswith("image/"):
        raise ImageRefused(f"the data: URI holds {media[0]!r}, not an image (image/png, image/jpeg, ...)")
    if len(payload) * 3 // 4 > policy.max_bytes:
        raise ImageRefused(f"the image is over {policy.max_bytes:,} bytes (--image-max-bytes)")
    if "base64" not in (m.lower() for m in media[1:]):
        return urllib.parse.unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRefused("the data: URI's base64 does not decode") from None


def _local(url: str, policy: ImagePolicy) -> bytes:
    if policy.root is None:
        raise ImageRefused("this server reads no local image files; send the image as a data: URI, or start the "
                           "server with --image-root DIR to allow files under DIR")
    if url.lower().startswith("file:"):
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ImageRefused(f"file:// URLs on another host ({parts.netloc}) are not read")
        path = Path(urllib.parse.unquote(parts.path))
    else:
        path = Path(url)
    path = (path if path.is_absolute() else policy.root / path).resolve()
    if not path.is_relative_to(policy.root):
        raise ImageRefused(f"{url} is outside the folder this server reads images from (--image-root)")
    if not path.is_file():
        raise ImageRefused(f"{url}: no such file under --image-root")
    if path.stat().st_size > policy.max_bytes:
        raise ImageRefused(f"{url} is over {policy.max_bytes:,} bytes (--image-max-bytes)")
    return path.read_bytes()


# -----------------------------------------------------------------------------
# Remote URLs


def fetch(url: str, policy: ImagePolicy) -> bytes:
    """GET the URL from the address its host was checked at, within the size and time limits."""
    import httpx

    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    if not host:
        raise ImageRefused(f"{url}: no host in the URL")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise ImageRefused(f"{url}: the port is not a number from 0 to 65535") from None
    address = _checked_address(host, port, policy)
    netloc = f"[{address}]" if ":" in address else address
    direct = urllib.parse.urlunsplit((parts.scheme, f"{netloc}:{port}", parts.path or "/", parts.query, ""))
    headers = {"Host": parts.netloc.rpartition("@")[2], "Accept": "image/*"}
    deadline = time.monotonic() + policy.timeout_s
    data = bytearray()
    try:
        with httpx.Client(timeout=policy.timeout_s, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", direct, headers=headers, extensions={"sni_hostname": host}) as response:
            if response.is_redirect:
                raise ImageRefused(f"{url} answered a redirect ({response.status_code}); redirects are not followed: "
                                   "send the image's own URL")
            if response.status_code != 200:
                raise ImageRefused(f"{url} answered HTTP {response.status_code}")
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > policy.max_bytes:
                raise ImageRefused(f"{url} is {int(length):,} bytes, over {policy.max_bytes:,} (--image-max-bytes)")
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > policy.max_bytes:
                    raise ImageRefused(f"{url} is over {policy.max_bytes:,} bytes (--image-max-bytes)")
                if time.monotonic() > deadline:
                    raise ImageRefused(f"{url} took over {policy.timeout_s:g} s (--image-timeout)")
    except httpx.TimeoutException:
        raise ImageRefused(f"{url} took over {policy.timeout_s:g} s (--image-timeout)") from None
    except httpx.HTTPError as err:
        raise ImageRefused(f"{url} could not be read ({type(err).__name__}: {err})") from None
    return bytes(data)


def _checked_address(host: str, port: int, policy: ImagePolicy) -> str:
    """The address to connect to: every address the host resolves to must be public, unless the operator allowed
    the host (--remote-image-hosts)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ImageRefused(f"{host}: the host name does not resolve ({err})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if host not in policy.remote_hosts:
        for address in addresses:
            plain = getattr(address, "ipv4_mapped", None) or address
            if not plain.is_global or plain.is_multicast:
                raise ImageRefused(f"{host} resolves to {address}, a private, loopback or reserved address; this "
                                   "server fetches images from public hosts only (the operator may allow a host "
                                   "with --remote-image-hosts)")
    return str(addresses[0])
