"""The face stage as an engine: detect, align, restore, paste back, streaming the image through.

It reads the image three ways, all bounded in memory whatever the image's size: a small copy
for the detector (bands, area-averaged), each face's footprint (bands, area-averaged to about
the crop's size) and then the whole image band by band on its way to the writer, with the
restored faces pasted into the bands they reach. Rows no face reaches are copied exactly.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engines import Engine, EngineInfo, ReadWindow, Survey, WriteRows
from ..errors import Cancelled
from ..imageio import ImageInfo, OutputOptions, OutputSpec, RawTiffReader, StreamingWriter
from ..plans import ProgressCallback, StopCheck, TimingCallback, UpscaleOptions, UpscalePlan
from ..tiling import MIN_TILE, plan_tiles
from .align import FACE_SIZE, crop_face
from .face_models import FaceRestorer
from .paste import FaceEllipse, RestoredFace, paste_band
from .search import FaceSearch, SearchRules, find_faces

#: rows handed to the writer at once
BAND_ROWS = 256
#: the work unit: one face crop's pixels, so a face restored counts FACE_UNITS (and a
#: measured restore is big enough for the throughput meter to learn from)
FACE_UNITS = FACE_SIZE * FACE_SIZE
#: the synthetic image a streaming calibration copies through
CALIBRATION_SIDE = 1024

Detect = Callable[[np.ndarray], list]


class FaceRestoreEngine(Engine):
    """One face model (GFPGAN, RestoreFormer, CodeFormer...) with the detector, at 1x."""

    def __init__(self, restorer: FaceRestorer, detect: Detect, info: EngineInfo, rules: SearchRules) -> None:
        self.restorer = restorer
        self.detect = detect
        self.info = info
        self.rules = rules  # the server's; a job's own options override only_center_face and max_faces

    def _chosen(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The job's options (parsed) over the server's defaults: every option present."""
        return {option.name: option.default for option in self.info.job_options} | dict(given)

    def _rules(self, chosen: Mapping[str, Any]) -> SearchRules:
        return replace(
            self.rules, only_center_face=bool(chosen["only_center_face"]), max_faces=int(chosen["max_faces"])
        )

    def plan(self, image: ImageInfo, options: UpscaleOptions) -> UpscalePlan:
        return self._plan(image, options, self._chosen(self.info.parse_options(options.engine_options)))

    def _plan(self, image: ImageInfo, options: UpscaleOptions, chosen: Mapping[str, Any]) -> UpscalePlan:
        scale = self.info.resolve_scale(options.scale)
        self.info.check_output_size(image.width, image.height, scale)
        one_tile = plan_tiles(image.width, image.height, max(image.width, image.height, MIN_TILE), 0)
        # work: a crop's worth per face it may restore; streamed: the image read for the
        # detector's copy (its networks' time is calibrated with it) and on its way to the
        # writer. With no face to restore (none found at intake) nothing is looked for.
        faces = int(chosen["max_faces"])
        looks = 1 if faces else 0
        return UpscalePlan(scale, one_tile, 1, faces * FACE_UNITS, (1 + looks) * image.width * image.height)

    def survey(self, read: ReadWindow | None, image: ImageInfo, options: UpscaleOptions, magnified: int = 1) -> Survey:
        given = self.info.parse_options(options.engine_options)
        chosen = self._chosen(given)
        if float(chosen["weight"]) >= 1.0:  # every face kept as it was: nothing to restore or charge
            return Survey(0, given | {"max_faces": 0})
        if read is None:
            return Survey(int(chosen["max_faces"]), given)
        search = find_faces(read, image, self.detect, self._rules(chosen), magnified)
        count = len(search.restore)
        return Survey(count, given | {"max_faces": count})

    def process(
        self,
        read: ReadWindow,
        image: ImageInfo,
        write_rows: WriteRows,
        options: UpscaleOptions,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        timings: TimingCallback | None = None,
    ) -> UpscalePlan:
        chosen = self._chosen(self.info.parse_options(options.engine_options))
        plan = self._plan(image, options, chosen)

        def check() -> None:
            if should_stop and should_stop():
                raise Cancelled("the run was stopped")

        check()
        if int(chosen["max_faces"]) == 0:  # none found at intake, or none asked for: nothing to look for
            search = FaceSearch((), ())
        else:
            search = find_faces(read, image, self.detect, self._rules(chosen))
        if float(chosen["weight"]) >= 1.0:
            kept = tuple((face, "weight 1 keeps each face as it was") for face in search.restore)
            search = FaceSearch((), kept + search.left_alone)
        # the detection's time is costed with the streamed pixels (calibrate_streaming), not as a face
        total = len(search.restore) + 2  # the detection, each face, the copy
        if progress:
            progress(1, total)
        faces = self._restore(read, image, search, chosen, check, progress, timings, total)
        for top in range(0, image.height, BAND_ROWS):
            check()
            band = read(0, top, image.width, min(BAND_ROWS, image.height - top))
            write_rows(paste_band(band, top, faces, image.colour_channels, image.peak))
        if progress:
            progress(total, total)
        return replace(plan, work_pixels=len(search.restore) * FACE_UNITS, outcome=search.describe())

    def _restore(
        self,
        read: ReadWindow,
        image: ImageInfo,
        search: FaceSearch,
        chosen: Mapping[str, Any],
        check: Callable[[], None],
        progress: ProgressCallback | None,
        timings: TimingCallback | None,
        total: int,
    ) -> list[RestoredFace]:
        strength = 1.0 - float(chosen["weight"])
        restored = []
        for done, face in enumerate(search.restore, start=2):
            check()
            footprint = face.alignment.footprint(image.width, image.height)
            if footprint is None or strength <= 0:
                continue
            started = time.perf_counter()
            crop = crop_face(read, face.alignment, image.width, image.height, image.colour_channels, image.peak)
            out = self.restorer.restore(crop[None], chosen.get("fidelity"))[0].float().cpu()
            if timings:
                timings(FACE_UNITS, time.perf_counter() - started)
            ellipse = FaceEllipse.around(face.alignment.landmarks)
            restored.append(RestoredFace(out, face.alignment, ellipse, strength, footprint))
            if progress:
                progress(done, total)
        return restored

    def calibrate(self) -> float:
        """Seconds per work unit: one restore of a synthetic crop, per crop pixel."""
        generator = torch.Generator().manual_seed(0)
        crop = torch.rand(1, 3, FACE_SIZE, FACE_SIZE, generator=generator)
        self.restorer.restore(crop, None)  # warm-up: first calls allocate
        started = time.perf_counter()
        self.restorer.restore(crop, None)
        return (time.perf_counter() - started) / FACE_UNITS

    def calibrate_streaming(self) -> float:
        """Seconds per streamed pixel: the detector (its copy and its networks) and the copy
        through, as a stage in a pipeline does them (raw TIFF in, raw TIFF out), on a synthetic
        noise image. The detector looks at most at a 1280 px copy, so on bigger images this
        overstates its share per pixel: an estimate on the safe side."""
        side = CALIBRATION_SIDE
        pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
        image = ImageInfo("tiff", side, side, 3, False, 8, None, 1, pixels.nbytes)
        spec = OutputSpec(side, side, 3, 8)
        raw = OutputOptions(format="tiff")
        with tempfile.TemporaryDirectory(prefix="satscale-calibration-") as folder:
            source, target = Path(folder) / "in.tif", Path(folder) / "out.tif"
            with StreamingWriter(source, spec, raw) as writer:
                writer.write_rows(pixels)
                writer.keep_raw()
            started = time.perf_counter()
            read = RawTiffReader(source, image, source="calibration").read
            find_faces(read, image, self.detect, self.rules)
            with StreamingWriter(target, spec, raw) as writer:
                for top in range(0, side, BAND_ROWS):
                    band = read(0, top, side, min(BAND_ROWS, side - top))
                    writer.write_rows(paste_band(band, top, [], 3, image.peak))
                writer.keep_raw()
            return (time.perf_counter() - started) / (2 * side * side)
