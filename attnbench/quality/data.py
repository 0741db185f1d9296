"""Byte-level corpora for the quality runs: the standard ones (downloaded once, SHA-256 checked),
any text file, and the running Python's standard library (always present offline).

    corpus = load_corpus("tinyshakespeare")          # or "enwik8", "text8", "wikitext103", ...
    corpus.splits["train"], corpus.splits["val"]     # numpy uint8 arrays (tokens are bytes)
    corpus.sha256                                    # hash of the content of every split

Files are looked up in ``data_dir`` (``--data-dir`` or ``ATTNBENCH_DATA_DIR``, under the names
below), then the cache (``ATTNBENCH_CACHE_DIR``, default ``~/.cache/attnbench/data``), then
downloaded into the cache (streamed into ``NAME.part``, kept only when its pinned hash matches).
Every file, local or downloaded, must match its pinned hash, or it is an error naming the file and
both hashes; a missing corpus without a network fails at once, saying where to put the file. There
is never a silent fallback to another corpus (``docs/quality-and-recall.md``).
"""

from __future__ import annotations

import bz2
import hashlib
import os
import sys
import sysconfig
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
# one mirror rejects urllib's default
USER_AGENT = "attnbench-data/0.1 (+https://github.com/attnbench)"


class CorpusError(ValueError):
    """A corpus that cannot be loaded: unknown name, missing file, checksum mismatch."""


@dataclass(frozen=True)
class Source:
    """One downloadable file and how to check it."""

    filename: str  # name in the data / cache folder
    url: str | None  # canonical download address (None: local only)
    sha256: str | None  # of the file itself; None only where the unpacked content is pinned
    size: int | None = None  # bytes, checked when given
    note: str = ""

    def describe(self) -> str:
        pin = f"sha256 {self.sha256}" if self.sha256 else f"{self.size:,} bytes"
        return f"{self.filename} ({pin}{', from ' + self.url if self.url else ''})"


@dataclass
class Corpus:
    name: str
    splits: dict[str, np.ndarray]  # split -> uint8 array
    description: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for name in sorted(self.splits):
            h.update(name.encode() + b"\0" + self.splits[name].tobytes() + b"\0")
        return h.hexdigest()

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise CorpusError(
                f"corpus {self.name!r} has no split {name!r}; it has: {', '.join(self.splits)}"
            )
        return self.splits[name]

    def info(self) -> dict:
        """What run.json records, so that numbers are only compared where corpora match."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "description": self.description,
            "bytes": {k: int(v.size) for k, v in self.splits.items()},
            **self.meta,
        }


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_cache_dir() -> Path:
    env = os.environ.get("ATTNBENCH_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "attnbench" / "data"


class DataStore:
    """Finds, checks and (when allowed) downloads the files of the corpora."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        offline: bool | None = None,
        timeout: float = 30.0,
    ):
        data_dir = data_dir or os.environ.get("ATTNBENCH_DATA_DIR") or None
        self.data_dir = Path(data_dir) if data_dir else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise CorpusError(f"data folder {self.data_dir} does not exist")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        if offline is None:
            offline = os.environ.get("ATTNBENCH_OFFLINE", "") not in ("", "0")
        self.offline = offline
        self.timeout = timeout

    @property
    def folders(self) -> list[Path]:
        return [d for d in (self.data_dir, self.cache_dir) if d is not None]

    def find(self, src: Source) -> Path | None:
        for folder in self.folders:
            path = folder / src.filename
            if path.is_file():
                self.check(src, path)
                return path
        return None

    def check(self, src: Source, path: Path) -> None:
        if src.size is not None and path.stat().st_size != src.size:
            raise CorpusError(
                f"{path}: {path.stat().st_size:,} bytes, expected {src.size:,} "
                f"(a partial or different file); delete it or replace it with "
                f"{src.describe()}"
            )
        if src.sha256:
            got = _sha256_file(path)
            if got != src.sha256:
                raise CorpusError(
                    f"{path}: sha256 {got} does not match the pinned {src.sha256}; "
                    f"delete it or replace it with {src.describe()}"
                )

    def fetch(self, src: Source) -> Path:
        """The checked local path of ``src``, downloading it into the cache when needed."""
        found = self.find(src)
        if found is not None:
            return found
        where = " or ".join(str(d / src.filename) for d in self.folders)
        if src.url is None or self.offline:
            why = "it has no download address" if src.url is None else "offline mode is on"
            raise CorpusError(
                f"{src.filename} is not cached and {why}: put {src.describe()} at "
                f"{where} (or point ATTNBENCH_DATA_DIR / --data-dir at a folder "
                "that holds it)"
            )
        return self.download(src)

    def download(self, src: Source) -> Path:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        final = self.cache_dir / src.filename
        part = final.with_name(final.name + ".part")
        h = hashlib.sha256()
        size = 0
        print(f"attnbench: downloading {src.url} -> {final}", file=sys.stderr)
        try:
            req = urllib.request.Request(src.url, headers={"User-Agent": USER_AGENT})
            with urllib.request.urlopen(req, timeout=self.timeout) as resp, open(part, "wb") as out:
                for block in iter(lambda: resp.read(1 << 20), b""):
                    out.write(block)
                    h.update(block)
                    size += len(block)
        except (urllib.error.URLError, OSError, ValueError) as e:
            part.unlink(missing_ok=True)
            raise CorpusError(
                f"could not download {src.url} ({e}); without a network, put "
                f"{src.describe()} at {final} or in a folder named by "
                "ATTNBENCH_DATA_DIR / --data-dir"
            ) from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        if (src.sha256 and h.hexdigest() != src.sha256) or (
            src.size is not None and size != src.size
        ):
            part.unlink(missing_ok=True)
            raise CorpusError(
                f"download of {src.url} does not match its pin ({size:,} bytes, "
                f"sha256 {h.hexdigest()}; expected {src.describe()}); nothing was "
                "kept"
            )
        part.replace(final)
        return final


def _check_content(name: str, data: bytes, sha256: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise CorpusError(
            f"{name}: unpacked content has sha256 {got}, expected {sha256} (a corrupted archive?)"
        )
    return data


def split_by_fractions(data: bytes, fractions: dict[str, float]) -> dict[str, np.ndarray]:
    """Consecutive byte ranges: {"train": 0.9, "val": 0.05, "test": 0.05} -> arrays.
    For enwik8's 100,000,000 bytes this is exactly the standard 90M / 5M / 5M split."""
    arr = np.frombuffer(data, dtype=np.uint8)
    out, start, acc = {}, 0, 0.0
    for i, (name, frac) in enumerate(fractions.items()):
        acc += frac
        end = len(arr) if i == len(fractions) - 1 else int(len(arr) * acc + 1e-9)  # nanoGPT: floor
        out[name] = arr[start:end]
        start = end
    return out


def _zip_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as z:
        try:
            return z.read(member)
        except KeyError:
            raise CorpusError(
                f"{path}: no member {member!r}; it holds {z.namelist()[:8]}"
            ) from None


# ---------------------------------------------------------------------------------------------
# The corpora. Each loader takes the DataStore and returns a Corpus.

ENWIK8 = Source(
    "enwik8.zip",
    "http://mattmahoney.net/dc/enwik8.zip",
    "547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
    36_445_475,
)
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"  # of the unzipped 100,000,000 bytes (published)
ENWIKI_EXCERPT = Source(
    "gensim_enwiki_xml_excerpt.xml.bz2",
    "https://github.com/piskvorky/gensim/raw/develop/gensim/test/test_data/"
    "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d",
    1_695_871,
)
ENWIKI_EXCERPT_UNPACKED = "34c1c63050c87cc8477b9ae36b1cb0edf372612c92938b742e579a7109c20fa4"
TINYSHAKESPEARE = Source(
    "tinyshakespeare_input.txt",
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
    "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    1_115_394,
)
# text8.zip has no published hash: its size is pinned, and the unzipped file's SHA-256.
TEXT8 = Source("text8.zip", "http://mattmahoney.net/dc/text8.zip", None, 31_344_016)
TEXT8_UNPACKED = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"
WIKITEXT103 = Source(
    "wikitext-103-raw-v1.zip",
    "https://wikitext.smerity.com/wikitext-103-raw-v1.zip",
    "91c00ae287f0d699e18605c84afc9e45c192bc6b7797ff8837e5474655a33794",
    191_984_949,
)
WIKITEXT2 = Source(
    "wikitext-2-v1.zip",
    "https://wikitext.smerity.com/wikitext-2-v1.zip",
    "92675f1d63015c1c8b51f1656a52d5bdbc33aafa60cc47a218a66e7ee817488c",
)
# WikiText-2's extracted split files, accepted in place of the archive (pinned one by one)
WIKITEXT2_SPLITS = {
    "val": Source(
        "wikitext2_tokenized_valid.txt",
        None,
        "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
        1_121_681,
    ),
    "test": Source(
        "wikitext2_tokenized_test.txt",
        None,
        "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
        1_256_449,
    ),
}
ENWIK8_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}


def _enwik8(store: DataStore) -> Corpus:
    data = _zip_member(store.fetch(ENWIK8), "enwik8")
    got = hashlib.md5(data).hexdigest()
    if got != ENWIK8_MD5:
        raise CorpusError(f"enwik8: unzipped MD5 {got}, expected {ENWIK8_MD5}")
    return Corpus(
        "enwik8",
        split_by_fractions(data, ENWIK8_FRACTIONS),
        "enwik8 (Hutter prize), raw bytes, 90M/5M/5M",
    )


def _enwiki_excerpt(store: DataStore) -> Corpus:
    data = bz2.decompress(store.fetch(ENWIKI_EXCERPT).read_bytes())
    _check_content("enwiki-excerpt", data, ENWIKI_EXCERPT_UNPACKED)
    return Corpus(
        "enwiki-excerpt",
        split_by_fractions(data, ENWIK8_FRACTIONS),
        "a 6 MB MediaWiki XML excerpt (gensim's test dump; not enwik8) split like enwik8",
    )


def _tinyshakespeare(store: DataStore) -> Corpus:
    data = store.fetch(TINYSHAKESPEARE).read_bytes()
    return Corpus(
        "tinyshakespeare",
        split_by_fractions(data, {"train": 0.9, "val": 0.1}),
        "tiny shakespeare (char-rnn), nanoGPT's 90/10 split",
    )


def _text8(store: DataStore) -> Corpus:
    data = _check_content("text8", _zip_member(store.fetch(TEXT8), "text8"), TEXT8_UNPACKED)
    return Corpus(
        "text8",
        split_by_fractions(data, ENWIK8_FRACTIONS),
        "text8 (lower-case Wikipedia letters and spaces), 90M/5M/5M",
    )


def _wikitext(
    store: DataStore,
    name: str,
    archive: Source,
    folder: str,
    ext: str,
    loose: dict[str, Source],
    want: tuple[str, ...],
) -> Corpus:
    splits: dict[str, np.ndarray] = {}
    member = {"train": "train", "val": "valid", "test": "test"}
    for split in want:
        src = loose.get(split)
        path = store.find(src) if src else None
        if path is not None:
            data = path.read_bytes()
        else:
            try:
                zpath = store.fetch(archive)
            except CorpusError as e:
                loose_note = (
                    (
                        f" (the extracted {', '.join(s.filename for s in loose.values())} "
                        "stand in for their splits only)"
                    )
                    if loose
                    else ""
                )
                raise CorpusError(f"{name} split {split!r}: {e}{loose_note}") from None
            data = _zip_member(zpath, f"{folder}/wiki.{member[split]}.{ext}")
        splits[split] = np.frombuffer(data, dtype=np.uint8)
    return Corpus(name, splits, f"{name} ({ext}), its own train/valid/test files")


def _wikitext103(store: DataStore, want=SPLITS) -> Corpus:
    return _wikitext(store, "wikitext103", WIKITEXT103, "wikitext-103-raw", "raw", {}, want)


def _wikitext2(store: DataStore, want=SPLITS) -> Corpus:
    return _wikitext(store, "wikitext2", WIKITEXT2, "wikitext-2", "tokens", WIKITEXT2_SPLITS, want)


# The standard library: the running Python's own sources, always present offline.
PYSTDLIB_SKIP = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idle_test",
    "__pycache__",
    "lib2to3",
    "ensurepip",
    "turtledemo",
    "encodings",
}  # tests, vendored, code tables


def pystdlib_files(root: Path | None = None) -> list[Path]:
    """The fixed selection: every ``*.py`` under the standard library folder, sorted by relative
    path, skipping test folders, site-packages, vendored packages and encoding tables."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if any(part in PYSTDLIB_SKIP or part.startswith("test_") for part in rel.parts):
            continue
        files.append(rel)
    return [root / p for p in sorted(files, key=lambda p: p.as_posix())]


def _pystdlib(store: DataStore) -> Corpus:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for path in pystdlib_files(root):
        parts.append(f"# file: {path.relative_to(root).as_posix()}\n".encode())
        parts.append(path.read_bytes())
    data = b"".join(parts)
    corpus = Corpus(
        "pystdlib",
        split_by_fractions(data, {"train": 0.9, "val": 0.1}),
        "the running Python's standard-library sources (sorted, tests excluded), 90/10",
    )
    corpus.meta.update(python=sys.version.split()[0], files=len(parts) // 2)
    return corpus


def load_file(path: str | Path, val_fraction: float = 0.1) -> Corpus:
    """Any file as bytes: the first (1 - val_fraction) for training, the rest held out."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"file:{path}: no such file")
    if not 0 < val_fraction < 1:
        raise CorpusError(f"val_fraction must be in (0, 1), got {val_fraction}")
    data = path.read_bytes()
    if len(data) < 1024:
        raise CorpusError(f"file:{path}: only {len(data)} bytes; a corpus needs at least 1 KiB")
    corpus = Corpus(
        f"file:{path}",
        split_by_fractions(data, {"train": 1 - val_fraction, "val": val_fraction}),
        f"{path}, split by bytes",
    )
    return corpus


SPLIT_FILE_CORPORA = {"wikitext103": _wikitext103, "wikitext2": _wikitext2}
CORPORA: dict[str, Callable[[DataStore], Corpus]] = {
    "pystdlib": _pystdlib,
    "tinyshakespeare": _tinyshakespeare,
    "enwik8": _enwik8,
    "text8": _text8,
    "wikitext103": _wikitext103,
    "wikitext2": _wikitext2,
    "enwiki-excerpt": _enwiki_excerpt,
}


def load_corpus(
    name: str,
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    offline: bool | None = None,
    val_fraction: float = 0.1,
    splits: tuple[str, ...] | None = None,
) -> Corpus:
    """A corpus by name (see ``CORPORA``) or ``file:PATH``; ``splits`` keeps only those (and,
    for corpora stored one file per split, reads only those files)."""
    if name.startswith("file:"):
        corpus = load_file(name[5:], val_fraction)
    elif name not in CORPORA:
        raise CorpusError(f"unknown dataset {name!r}; valid: {', '.join(CORPORA)}, or file:PATH")
    elif name in SPLIT_FILE_CORPORA and splits:
        corpus = SPLIT_FILE_CORPORA[name](DataStore(data_dir, cache_dir, offline), tuple(splits))
    else:
        corpus = CORPORA[name](DataStore(data_dir, cache_dir, offline))
    if splits:
        corpus.splits = {s: corpus.split(s) for s in splits}
    return corpus


def check_dataset_name(name: str) -> None:
    """Validate a dataset name without loading it (suite validation)."""
    if not name.startswith("file:") and name not in CORPORA:
        raise CorpusError(f"unknown dataset {name!r}; valid: {', '.join(CORPORA)}, or file:PATH")


def unigram_entropy_bits(train: np.ndarray, held_out: np.ndarray) -> float:
    """Order-0 baseline: cross-entropy (bits per byte) of ``held_out`` under the add-one smoothed
    byte frequencies of ``train``."""
    counts = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[held_out].mean())


__all__ = [
    "CORPORA",
    "Corpus",
    "CorpusError",
    "DataStore",
    "Source",
    "load_corpus",
    "split_by_fractions",
    "pystdlib_files",
    "unigram_entropy_bits",
]
