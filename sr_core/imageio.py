"""Image decoding, validation and streaming encoding (libvips through pyvips).

- Formats are recognised by their magic bytes and opened with that one loader, so
  no other libvips loader (SVG, PDF, ImageMagick...) ever sees untrusted input.
- Limits (bytes, pixels, side) are checked on the header, before any decoding:
  a decompression bomb is refused without allocating its pixels.
- `validate_image` is what the API calls before issuing an invoice: header checks,
  then a full streaming decode that catches truncated or damaged files.
- `ImageReader` serves tiles of the oriented, normalised image (RGB/grey, 8 or
  16 bit, optional alpha); `StreamingWriter` takes output rows band by band into
  an uncompressed TIFF on disk and encodes it with libvips in sequential mode, so
  memory does not grow with the output size. The final file appears atomically.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyvips
import tifffile

from .errors import CorruptImageError, ImageTooLargeError, OutputError, UnsupportedImageError

ACCEPTED_FORMATS = ("png", "jpeg", "webp", "tiff")
OUTPUT_EXTENSIONS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".tif": "tiff", ".tiff": "tiff"}
FORMAT_EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp", "tiff": ".tiff"}
#: other names the format of a request may go by
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
WEBP_MAX_SIDE = 16383
JPEG_MAX_SIDE = 65535
PNG_MAX_SIDE = 2**31 - 1
# formats that can hold 16-bit samples; others get 8-bit output
SIXTEEN_BIT_FORMATS = ("png", "tiff")


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 64_000_000  # a 4000x3000 photo is 12 MP
    max_side: int = 20_000


@dataclass(frozen=True)
class ImageInfo:
    format: str  # png | jpeg | webp | tiff
    width: int  # after EXIF orientation
    height: int
    channels: int  # including alpha: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA
    has_alpha: bool
    bit_depth: int  # 8 or 16
    icc_profile: bytes | None
    orientation: int  # EXIF orientation of the file (already applied)
    byte_size: int

    @property
    def colour_channels(self) -> int:
        return self.channels - int(self.has_alpha)

    @property
    def peak(self) -> float:
        """The largest sample value (255 for 8-bit, 65535 for 16-bit)."""
        return 65535.0 if self.bit_depth == 16 else 255.0


def sniff_format(head: bytes) -> str | None:
    """The accepted format these leading bytes belong to, else None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def _unsupported(source: str, head: bytes) -> UnsupportedImageError:
    if not head:
        return UnsupportedImageError(f"{source}: the file is empty")
    return UnsupportedImageError(f"{source}: not a supported image (accepted: PNG, JPEG, WebP, TIFF)")


def _vips_message(exc: pyvips.Error) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    detail = [line for line in lines[1:] if not line.startswith("unable to")]
    return "; ".join(detail or lines)[:300]


def _open_vips(data: bytes | Path, fmt: str, access: str) -> pyvips.Image:
    """Open with the one loader of the sniffed format (header only; pixels stay lazy)."""
    if isinstance(data, Path):
        return getattr(pyvips.Image, f"{fmt}load")(str(data), access=access, fail_on="error")
    return getattr(pyvips.Image, f"{fmt}load_buffer")(data, access=access, fail_on="error")


def _check_limits(source: str, width: int, height: int, byte_size: int, limits: ImageLimits) -> None:
    if byte_size > limits.max_bytes:
        raise ImageTooLargeError(f"{source}: {byte_size} bytes exceeds the limit of {limits.max_bytes} bytes")
    if width > limits.max_side or height > limits.max_side:
        raise ImageTooLargeError(f"{source}: {width}x{height} exceeds the maximum side of {limits.max_side} pixels")
    if width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{source}: {width}x{height} = {width * height / 1e6:.1f} megapixels exceeds the limit of "
            f"{limits.max_pixels / 1e6:.1f} megapixels"
        )


def check_dimensions(width: int, height: int, limits: ImageLimits, source: str = "image") -> None:
    """The size limits alone, for an image known only by its dimensions (a quote): the same
    rule, and the same error, as for an uploaded file."""
    _check_limits(source, width, height, 0, limits)


def _orientation(image: pyvips.Image) -> int:
    return image.get("orientation") if image.get_typeof("orientation") else 1


def _normalise(image: pyvips.Image, source: str) -> pyvips.Image:
    """Apply EXIF orientation and bring pixels to RGB/grey (+alpha), 8 or 16 bit unsigned."""
    image = image.autorot()
    interpretation = image.interpretation
    if interpretation == "cmyk":
        image = image.icc_transform("srgb", embedded=True, input_profile="cmyk")
    elif interpretation in ("lab", "labs", "labq", "lch", "cmc", "xyz", "yxy", "scrgb", "hsv"):
        image = image.colourspace("srgb")
    if image.format not in ("uchar", "ushort"):
        raise UnsupportedImageError(
            f"{source}: {image.format} samples are not supported (8 or 16 bit unsigned integers only)"
        )
    if image.bands > 4:
        raise UnsupportedImageError(f"{source}: {image.bands} channels are not supported (grey, RGB, with alpha)")
    return image


def _info(image: pyvips.Image, fmt: str, orientation: int, byte_size: int) -> ImageInfo:
    has_alpha = image.bands in (2, 4)
    icc = image.get("icc-profile-data") if image.get_typeof("icc-profile-data") else None
    return ImageInfo(
        format=fmt,
        width=image.width,
        height=image.height,
        channels=image.bands,
        has_alpha=has_alpha,
        bit_depth=16 if image.format == "ushort" else 8,
        icc_profile=bytes(icc) if icc else None,
        orientation=orientation,
        byte_size=byte_size,
    )


def _open(data: bytes | Path, limits: ImageLimits, source: str, access: str) -> tuple[pyvips.Image, ImageInfo]:
    if isinstance(data, Path):
        try:
            byte_size = data.stat().st_size
            with data.open("rb") as handle:
                head = handle.read(16)
        except OSError as exc:
            raise UnsupportedImageError(f"{source}: cannot read: {exc.strerror or exc}") from None
    else:
        byte_size, head = len(data), data[:16]
    fmt = sniff_format(head)
    if fmt is None:
        raise _unsupported(source, head)
    if byte_size > limits.max_bytes:
        _check_limits(source, 0, 0, byte_size, limits)
    try:
        raw = _open_vips(data, fmt, access)
        orientation = _orientation(raw)
        # the header's size (before rotation) is what decoding would allocate
        _check_limits(source, raw.width, raw.height, byte_size, limits)
        image = _normalise(raw, source)
    except pyvips.Error as exc:
        raise CorruptImageError(f"{source}: damaged {fmt.upper()} file: {_vips_message(exc)}") from None
    return image, _info(image, fmt, orientation, byte_size)


def validate_image(data: bytes | Path, limits: ImageLimits | None = None, source: str = "image") -> ImageInfo:
    """Check an upload completely: format, limits, then a full decode.

    Raises UnsupportedImageError, ImageTooLargeError or CorruptImageError with a
    message naming `source`. Memory stays small: the decode streams.
    """
    image, info = _open(data, limits or ImageLimits(), source, access="sequential")
    try:
        image.avg()  # pulls every pixel through the decoder
    except pyvips.Error as exc:
        raise CorruptImageError(f"{source}: damaged {info.format.upper()} file: {_vips_message(exc)}") from None
    return info


class ImageReader:
    """Random-access tiles of a validated image, as numpy arrays (H, W, C) uint8/uint16.

    `sequential=True` for a reader that fetches full-width bands top to bottom only: formats
    without random access (PNG, JPEG, WebP) then stream instead of being decoded whole first
    (a 192 MP PNG read at random costs about 0.9 GiB; read in order, a band)."""

    def __init__(
        self, data: bytes | Path, limits: ImageLimits | None = None, source: str | None = None, sequential: bool = False
    ) -> None:
        self.source = source or (str(data) if isinstance(data, Path) else "image")
        self._data = data  # a buffer must outlive the image that reads from it
        access = "sequential" if sequential else "random"
        self.image, self.info = _open(data, limits or ImageLimits(), self.source, access=access)
        self._region = pyvips.Region.new(self.image)
        # EXIF travels to the output; libvips rewrites its orientation and size on save
        self.exif = bytes(self.image.get("exif-data")) if self.image.get_typeof("exif-data") else None
        self.resolution = (self.image.xres, self.image.yres)
        self._dtype = np.uint16 if self.info.bit_depth == 16 else np.uint8

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        try:
            raw = self._region.fetch(x, y, width, height)
        except pyvips.Error as exc:
            raise CorruptImageError(f"{self.source}: damaged file: {_vips_message(exc)}") from None
        return np.frombuffer(raw, dtype=self._dtype).reshape(height, width, self.info.channels)


class RawTiffReader:
    """Windows of an uncompressed, contiguous TIFF that StreamingWriter.keep_raw wrote, read
    with one pread per row: nothing is cached or mapped, so reading a whole 48 MP intermediate
    window by window costs a window (libvips' random-access reader keeps every strip it
    decoded: the image's size in RSS by the end)."""

    def __init__(self, path: Path, like: ImageInfo, source: str | None = None) -> None:
        self.source = source or str(path)
        with tifffile.TiffFile(path) as tiff:
            page = tiff.pages[0]
            offsets, counts, shape, dtype = page.dataoffsets, page.databytecounts, page.shape, page.dtype
            compressed = page.compression != 1
        ends = [int(o) + int(c) for o, c in zip(offsets, counts, strict=True)]
        if compressed or any(int(o) != end for o, end in zip(offsets[1:], ends, strict=False)):
            raise CorruptImageError(f"{self.source}: not an uncompressed, contiguous intermediate image")
        self._offset = int(offsets[0])
        height, width = shape[0], shape[1]
        channels = shape[2] if len(shape) == 3 else 1
        self._dtype = np.dtype(dtype)
        self._row_bytes = width * channels * self._dtype.itemsize
        self.info = replace(like, format="tiff", width=width, height=height, channels=channels, orientation=1,
                            byte_size=path.stat().st_size)  # fmt: skip
        self._channels = channels
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        item = self._dtype.itemsize * self._channels
        out = np.empty((height, width * item), dtype=np.uint8)
        for row in range(height):
            start = self._offset + (y + row) * self._row_bytes + x * item
            chunk = os.pread(self._fd, width * item, start)
            if len(chunk) != width * item:
                raise CorruptImageError(f"{self.source}: the file ends early")
            out[row] = np.frombuffer(chunk, dtype=np.uint8)
        return out.view(self._dtype).reshape(height, width, self._channels)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


def normalise_format(name: str) -> str:
    """'JPG' -> 'jpeg', 'tif' -> 'tiff'; refuses anything we cannot write."""
    fmt = FORMAT_ALIASES.get(name.lower(), name.lower())
    if fmt not in ACCEPTED_FORMATS:
        raise OutputError(f"output format {name!r} is not one of png, jpeg, webp, tiff")
    return fmt


def output_format(path: Path, requested: str | None = None) -> str:
    if requested:
        return normalise_format(requested)
    fmt = OUTPUT_EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"{path}: cannot tell the output format from the extension (use .png .jpg .webp .tiff)")
    return fmt


@dataclass(frozen=True)
class OutputOptions:
    format: str | None = None  # None: from the output file's extension
    quality: int = 95  # JPEG / WebP
    lossless: bool = False  # WebP
    compression: int = 6  # PNG zlib level / TIFF deflate level


@dataclass(frozen=True)
class OutputSpec:
    width: int
    height: int
    channels: int
    bit_depth: int  # bit depth of the rows handed to the writer
    icc_profile: bytes | None = None
    exif: bytes | None = None
    resolution: tuple[float, float] | None = None  # pixels per mm, as libvips counts
    xmp: bytes | None = None  # an XMP packet (sr_core.metadata)


def check_output(spec: OutputSpec, fmt: str, path: Path) -> None:
    """Refuse, before any work, an output the format cannot hold."""
    limit = {"webp": WEBP_MAX_SIDE, "jpeg": JPEG_MAX_SIDE}.get(fmt, PNG_MAX_SIDE)
    if max(spec.width, spec.height) > limit:
        raise OutputError(
            f"{path}: {spec.width}x{spec.height} is too large for {fmt.upper()} (max side {limit}); use PNG or TIFF"
        )


class StreamingWriter:
    """Accepts an image as consecutive bands of rows; encodes at `close()`.

    Rows are appended to an uncompressed BigTIFF next to the output, whose header
    tifffile writes up front (pixel data stays in the page cache, not in process
    memory). libvips then reads it strip by strip (sequential access) and encodes
    the final format, so peak memory is independent of the image size. The output
    file only appears, complete, when encoding succeeded; `abort()` leaves nothing.
    """

    def __init__(self, path: Path, spec: OutputSpec, options: OutputOptions | None = None) -> None:
        self.path = path
        self.spec = spec
        self.options = options or OutputOptions()
        self.format = output_format(path, self.options.format)
        check_output(spec, self.format, path)
        self.dtype = np.uint16 if spec.bit_depth == 16 else np.uint8
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".staging.tif")
        os.close(fd)
        self._staging = Path(staging)
        try:
            self._file = self._reserve()
        except BaseException:
            self._staging.unlink(missing_ok=True)
            raise
        self.rows_written = 0

    def _reserve(self):
        """Write the TIFF header and directory; return a handle positioned at the pixel data."""
        spec = self.spec
        grey = spec.channels <= 2
        shape = (spec.height, spec.width) + ((spec.channels,) if spec.channels > 1 else ())
        with tifffile.TiffWriter(self._staging, bigtiff=True) as tiff:
            offset, _ = tiff.write(
                shape=shape,
                dtype=self.dtype,
                photometric="minisblack" if grey else "rgb",
                planarconfig="contig" if spec.channels > 1 else None,
                extrasamples=["unassalpha"] if spec.channels in (2, 4) else None,
                rowsperstrip=64,
                metadata=None,  # no tifffile JSON description to leak into the output
                returnoffset=True,
            )
        handle = self._staging.open("r+b")
        handle.seek(offset)
        return handle

    def write_rows(self, rows: np.ndarray) -> None:
        expected = (self.spec.width, self.spec.channels)
        if rows.dtype != self.dtype or (rows.shape[1], rows.shape[2]) != expected:
            raise ValueError(f"rows of shape {rows.shape} {rows.dtype} do not fit {self.spec}")
        if self.rows_written + rows.shape[0] > self.spec.height:
            raise ValueError("more rows than the image height")
        self._file.write(np.ascontiguousarray(rows).data)
        self.rows_written += rows.shape[0]

    def _image(self) -> pyvips.Image:
        spec = self.spec
        image = pyvips.Image.tiffload(str(self._staging), access="sequential", fail_on="error")
        grey = spec.channels <= 2
        interpretation = ("grey16" if grey else "rgb16") if spec.bit_depth == 16 else ("b-w" if grey else "srgb")
        image = image.copy(interpretation=interpretation)
        if spec.resolution:
            image = image.copy(xres=spec.resolution[0], yres=spec.resolution[1])
        if spec.bit_depth == 16 and self.format not in SIXTEEN_BIT_FORMATS:
            image = image.colourspace("b-w" if grey else "srgb")  # 16 -> 8 bit
        if self.format == "jpeg" and image.bands in (2, 4):
            image = image.flatten(background=[255] * (image.bands - 1))  # JPEG has no alpha: white matte
        if spec.icc_profile:
            image.set_type(pyvips.GValue.blob_type, "icc-profile-data", spec.icc_profile)
        if spec.exif:
            image.set_type(pyvips.GValue.blob_type, "exif-data", spec.exif)
            # pixels are upright now; libvips rewrites the EXIF tag from this field on save
            image.set_type(pyvips.GValue.gint_type, "orientation", 1)
        if spec.xmp:
            image.set_type(pyvips.GValue.blob_type, "xmp-data", spec.xmp)
        return image

    def _save(self, image: pyvips.Image, target: Path) -> None:
        options = self.options
        if self.format == "png":
            image.pngsave(str(target), compression=options.compression, bitdepth=16 if image.format == "ushort" else 8)
        elif self.format == "jpeg":
            image.jpegsave(str(target), Q=options.quality, optimize_coding=True)
        elif self.format == "webp":
            image.webpsave(str(target), Q=options.quality, lossless=options.lossless)
        else:
            big = image.width * image.height * image.bands * (2 if image.format == "ushort" else 1) > 3 << 30
            image.tiffsave(
                str(target), compression="deflate", level=options.compression, predictor="horizontal", bigtiff=big
            )

    def close(self) -> Path:
        """Encode and move the finished file into place; returns its path."""
        self._file.close()
        if self.rows_written != self.spec.height:
            self.abort()
            raise ValueError(f"only {self.rows_written} of {self.spec.height} rows were written")
        fd, temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".partial")
        os.close(fd)
        try:
            self._save(self._image(), Path(temp_name))
            os.replace(temp_name, self.path)
        except pyvips.Error as exc:
            Path(temp_name).unlink(missing_ok=True)
            raise OutputError(f"{self.path}: encoding failed: {_vips_message(exc)}") from None
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        finally:
            self._staging.unlink(missing_ok=True)
        return self.path

    def keep_raw(self) -> Path:
        """Move the uncompressed TIFF the rows went into to `path`, unencoded (an intermediate
        image: RawTiffReader reads its windows straight from the file)."""
        self._file.close()
        if self.rows_written != self.spec.height:
            self.abort()
            raise ValueError(f"only {self.rows_written} of {self.spec.height} rows were written")
        os.replace(self._staging, self.path)
        return self.path

    def abort(self) -> None:
        self._file.close()
        self._staging.unlink(missing_ok=True)

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self.abort()
