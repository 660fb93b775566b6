"""`mnv2 fetch-weights`: download the official Keras MobileNetV2 1.0/224 file, check its
sha256, and convert it into the per-user cache."""
from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from pathlib import Path

from .errors import EngineError
from .files import temporary, writing

OFFICIAL_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
# The digest of the official file could not be read on the machine this was written on
# (no network); until it is pinned here, callers pass the one they trust with --sha256.
OFFICIAL_SHA256 = None
CHUNK = 1 << 16


def fetch_weights(dst, url: str = OFFICIAL_URL, sha256: str | None = OFFICIAL_SHA256, labels=None,
                  force: bool = False, timeout: float = 30.0):
    """Download `url`, refuse it unless its sha256 matches, convert it to mnv2.h5 at `dst`.
    The download goes to a temporary file beside `dst`, removed whatever happens."""
    from .weights import convert

    if not sha256:
        raise EngineError(f"no sha256 is pinned for {url}: pass --sha256 with the digest of a copy "
                          "you trust, or convert a local file with: mnv2 convert SRC DST")
    dst = Path(dst)
    if dst.exists() and not force and not dst.is_dir():
        raise EngineError(f"{dst}: already exists (use --force to replace it)")
    with writing(dst):
        dst.parent.mkdir(parents=True, exist_ok=True)
    with temporary(dst) as tmp:
        digest = _download(url, tmp, dst, timeout)
        if digest != sha256.lower():
            raise EngineError(f"{url}: sha256 {digest} does not match the expected {sha256}; "
                              "the download was discarded")
        return convert(tmp, dst, force=force, labels=labels)  # a weights-only file: recorded at 224


def _download(url: str, tmp: Path, dst: Path, timeout: float) -> str:
    """Download `url` into tmp; its sha256. Network errors name the url, write errors
    (a full disk) the user's destination `dst`."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (urllib.error.URLError, OSError, ValueError) as e:
        _cannot_download(url, dst, e)
    with response, writing(dst), open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except OSError as e:
                    _cannot_download(url, dst, e)
                if not chunk:
                    return digest.hexdigest()
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))


def _cannot_download(url: str, dst: Path, e: Exception):
    raise EngineError(f"could not download {url} ({getattr(e, 'reason', e)}). Without network, convert a "
                      f"local copy instead: mnv2 convert mobilenet_v2_weights_tf_dim_ordering_tf_"
                      f"kernels_1.0_224.h5 {dst}") from None
