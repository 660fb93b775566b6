"""`mnv2 fetch-weights`: download the official Keras MobileNetV2 1.0/224 file, check its
sha256, and convert it into the per-user cache."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .errors import EngineError

OFFICIAL_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5")
# The digest of the official file could not be read on the machine this was written on
# (no network); until it is pinned here, callers pass the one they trust with --sha256.
OFFICIAL_SHA256 = None
CHUNK = 1 << 16


def fetch_weights(dst, url: str = OFFICIAL_URL, sha256: str | None = OFFICIAL_SHA256, labels=None,
                  force: bool = False, timeout: float = 30.0):
    """Download `url`, refuse it unless its sha256 matches, convert it to mnv2.h5 at `dst`."""
    from tqdm import tqdm

    from .weights import convert

    if not sha256:
        raise EngineError(f"no sha256 is pinned for {url}: pass --sha256 with the digest of a copy "
                          "you trust, or convert a local file with: mnv2 convert SRC DST")
    dst = Path(dst)
    if dst.exists() and not force:
        raise EngineError(f"{dst}: already exists (use --force to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download.", suffix=".h5", dir=dst.parent)
    try:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="download", leave=False) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise EngineError(f"could not download {url} ({reason}). Without network, convert a "
                              f"local copy instead: mnv2 convert mobilenet_v2_weights_tf_dim_ordering_tf_"
                              f"kernels_1.0_224.h5 {dst}") from None
        if digest.hexdigest() != sha256.lower():
            raise EngineError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}; "
                              "the download was discarded")
        return convert(tmp, dst, force=force, size=224, labels=labels)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
