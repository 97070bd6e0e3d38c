"""Camera sources: `NAME=SOURCE` specs, image folders and `synthetic:CATEGORY` (video files and URLs: video.py).

A source yields `Capture`s: the encoded bytes of one frame as they will be sent (an image file as it is on disk),
a name, and the ground truth when the source knows it (1 defective, 0 good). SOURCE is one of

    DIR                  an image folder, sorted by path; labelled when it holds a `good/` subfolder (the MVTec
                         test layout: `good/` = 0, every other subfolder = 1; `ground_truth/`, `masks/` skipped)
    FILE                 a video file (PyAV)
    rtsp://... http://...  a live camera (PyAV; open/read timeouts, reconnect)
    synthetic:CATEGORY   the synthetic dataset's test split (`ssn synth`), replayed in a loop, each class folder
                         spread evenly over the sequence, each camera from its own starting point, with its
                         ground truth
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".jp2"})
URL_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
SKIPPED_DIRS = frozenset({"ground_truth", "masks"})
GOOD = "good"
SYNTHETIC = "synthetic:"
DEFAULT_SYNTHETIC_ROOT = Path("data/synth")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class CameraSpecError(ValueError):
    """A `--camera` argument that cannot be parsed (nothing starts)."""


class SourceError(RuntimeError):
    """A source that cannot be opened or read (that camera stops; the others go on)."""


@dataclass(frozen=True)
class Capture:
    data: bytes  # the encoded frame (b"" when `error` is set)
    name: str  # file path relative to the folder, or "frame N"
    truth: int | None = None  # ground truth: 1 defective, 0 good, None unknown
    error: str | None = None  # the frame could not be read (recorded as an error, not sent)


@dataclass(frozen=True)
class CameraSpec:
    name: str
    source: str
    policy: str | None = None  # these override the run's options (Python API)
    fps: float | None = None
    frames: int | None = None


def parse_camera(text: str) -> CameraSpec:
    name, sep, source = text.partition("=")
    if not sep or not source.strip():
        raise CameraSpecError(
            f"--camera {text!r}: expected NAME=SOURCE (SOURCE: a folder, a video file, a URL or synthetic:CATEGORY)"
        )
    if not _NAME.fullmatch(name):
        raise CameraSpecError(f"--camera {text!r}: the name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    if source.startswith(SYNTHETIC) and not source[len(SYNTHETIC) :].strip():
        raise CameraSpecError(f"--camera {text!r}: synthetic needs a category, e.g. synthetic:metal")
    scheme = source.split("://", 1)[0].lower() if "://" in source else None
    if scheme is not None and scheme not in URL_SCHEMES:
        raise CameraSpecError(f"--camera {text!r}: URL scheme {scheme!r} is not supported ({', '.join(URL_SCHEMES)})")
    return CameraSpec(name, source.strip())


def parse_cameras(texts: list[str]) -> list[CameraSpec]:
    if not texts:
        raise CameraSpecError("no camera: give at least one --camera NAME=SOURCE")
    specs = [parse_camera(t) for t in texts]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise CameraSpecError(f"camera name {spec.name!r} is given twice: names tag the frames, keep them unique")
        seen.add(spec.name)
    return specs


def is_url(source: str) -> bool:
    return "://" in source


class Source:
    """Base: `open()` raises SourceError naming the problem; `frames(stop)` yields Captures until exhausted."""

    live = False  # a live camera: frames are not kept waiting (default policy drop-oldest)
    reconnects = 0  # reconnections of a live source

    def __init__(self, description: str):
        self.description = description

    def open(self) -> None:
        pass

    def frames(self, stop: threading.Event) -> Iterator[Capture]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderSource(Source):
    """Image files of a folder, sent as they are on disk; in a loop when `loop`."""

    def __init__(self, folder: Path, loop: bool = False, interleave: bool = False, offset_key: str = ""):
        super().__init__(str(folder))
        self.folder, self.loop, self.interleave, self.offset_key = Path(folder), loop, interleave, offset_key
        self.files: list[tuple[Path, int | None]] = []

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceError(f"image folder {str(self.folder)!r} does not exist or is not a folder")
        try:
            files = [p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        except OSError as err:
            raise SourceError(f"cannot list image folder {str(self.folder)!r}: {err}") from None
        relative = [p.relative_to(self.folder) for p in files]
        keep = [(p, r) for p, r in zip(files, relative) if not SKIPPED_DIRS & set(r.parts[:-1])]
        if not keep:
            raise SourceError(
                f"image folder {str(self.folder)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        labelled = (self.folder / GOOD).is_dir()
        keep.sort(key=lambda pr: pr[1].as_posix())
        if self.interleave:  # each class folder spread evenly over the sequence, as parts arrive on a line
            folders = [r.parent.as_posix() for _, r in keep]
            sizes = {f: folders.count(f) for f in folders}
            rank = {id(pr): k - folders.index(folders[k]) for k, pr in enumerate(keep)}
            keep.sort(key=lambda pr: ((rank[id(pr)] + 0.5) / sizes[pr[1].parent.as_posix()], pr[1].as_posix()))
        self.files = [(p, _truth(r) if labelled else None) for p, r in keep]
        if self.offset_key:  # each camera replays from its own point
            start = zlib.crc32(self.offset_key.encode()) % len(self.files)
            self.files = self.files[start:] + self.files[:start]

    def frames(self, stop: threading.Event) -> Iterator[Capture]:
        while not stop.is_set():
            for path, truth in self.files:
                name = path.relative_to(self.folder).as_posix()
                try:
                    yield Capture(path.read_bytes(), name, truth)
                except OSError as err:
                    yield Capture(b"", name, truth, error=f"cannot read {path}: {err.strerror or err}")
            if not self.loop:
                return


def _truth(relative: Path) -> int | None:
    if len(relative.parts) < 2:
        return None  # a file beside the class folders
    return 0 if relative.parts[0] == GOOD else 1


def synthetic_source(category: str, root: Path, camera: str) -> FolderSource:
    folder = root / category / "test"
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if (p / "test").is_dir()) if root.is_dir() else []
        hint = f"it holds: {', '.join(found)}" if found else "write it with `ssn synth --out ROOT` (--synthetic-root)"
        raise SourceError(f"synthetic:{category}: no test split at {str(folder)!r}; {hint}")
    source = FolderSource(folder, loop=True, interleave=True, offset_key=camera)
    source.description = f"synthetic:{category} ({folder})"
    return source


def open_source(
    spec: CameraSpec,
    loop: bool = False,
    synthetic_root: Path = DEFAULT_SYNTHETIC_ROOT,
    open_timeout: float = 10.0,
    read_timeout: float = 10.0,
) -> Source:
    """The Source of a camera spec, opened; SourceError (naming the camera and the problem) when it cannot run."""
    try:
        if spec.source.startswith(SYNTHETIC):
            source: Source = synthetic_source(spec.source[len(SYNTHETIC) :], Path(synthetic_root), spec.name)
        elif is_url(spec.source):
            from pipeline.stream.video import VideoSource

            source = VideoSource(spec.source, live=True, open_timeout=open_timeout, read_timeout=read_timeout)
        elif Path(spec.source).is_dir():
            source = FolderSource(Path(spec.source), loop=loop)
        elif Path(spec.source).is_file():
            from pipeline.stream.video import VideoSource

            source = VideoSource(spec.source, live=False, loop=loop)
        else:
            raise SourceError(f"{spec.source!r} is not a folder, a video file, a URL or synthetic:CATEGORY")
        source.open()
    except SourceError as err:
        raise SourceError(f"camera {spec.name}: {err}") from None
    return source
