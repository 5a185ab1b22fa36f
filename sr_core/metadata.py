"""What an output carries besides its pixels: the metadata policy, in one place.

Photographers ask that EXIF (camera, lens, date), the ICC profile and the orientation survive an
upscale, and that the upscale's parameters be written into the file. A published output is
public, though, and a photo's GPS position is the one thing in EXIF that tells strangers where
someone lives. So:

    auto   keep EXIF and ICC; a published (public) output loses its location (the GPS IFD)
    keep   keep everything, location included, published or not
    strip  no EXIF and no XMP; the ICC profile stays (it defines the colours, it says nothing
           about anyone)

Every policy writes pixels upright (orientation 1), and libvips rewrites the EXIF dimensions
(PixelXDimension/PixelYDimension) and resolution on save. The parameters (pipeline, models,
weights sha256, software) go in as an XMP packet except under `strip`. libvips' TIFF writer
carries ICC and XMP but no EXIF block.
"""

from __future__ import annotations

import io
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from xml.sax.saxutils import escape, quoteattr

log = logging.getLogger("satscale.metadata")

#: the EXIF tag that points at the GPS IFD (where every location tag lives)
GPS_IFD_POINTER = 0x8825
#: Satscale's XMP namespace (a URN: it names, it does not resolve)
XMP_NAMESPACE = "urn:satscale:xmp:1.0:"


class MetadataPolicy(StrEnum):
    AUTO = "auto"
    KEEP = "keep"
    STRIP = "strip"


@dataclass(frozen=True)
class StageParameters:
    """One pipeline stage as the XMP packet names it."""

    model: str
    scale: int
    weights_sha256: str
    settings: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputMetadata:
    """What the final file carries: EXIF and XMP blobs (None: none)."""

    exif: bytes | None = None
    xmp: bytes | None = None


@dataclass(frozen=True)
class MetadataRule:
    """How an output's metadata is chosen from its input's. `public`: the output is published
    (anyone may fetch it); `xmp`: the parameters packet (parameters_xmp)."""

    policy: MetadataPolicy = MetadataPolicy.AUTO
    public: bool = False
    xmp: bytes | None = None

    @classmethod
    def writing(
        cls, policy: MetadataPolicy, public: bool, software: str, stages: Sequence[StageParameters]
    ) -> MetadataRule:
        """The rule with the parameters packet every policy but `strip` writes."""
        return cls(policy, public, None if policy is MetadataPolicy.STRIP else parameters_xmp(software, stages))

    @property
    def keeps_input_metadata(self) -> bool:
        """Whether everything the input carried may travel (its location included)."""
        return self.policy is MetadataPolicy.KEEP or (self.policy is MetadataPolicy.AUTO and not self.public)

    def apply(self, source_exif: bytes | None) -> OutputMetadata:
        if self.policy is MetadataPolicy.STRIP:
            return OutputMetadata()
        exif = source_exif
        if exif and self.public and self.policy is MetadataPolicy.AUTO:
            exif = without_location(exif)
        return OutputMetadata(exif=exif or None, xmp=self.xmp)


def without_location(exif: bytes) -> bytes | None:
    """The EXIF block without its GPS IFD (None if nothing else is left, or it cannot be read:
    a block we cannot parse cannot be shown to be free of a location, so it goes)."""
    from PIL import Image

    try:
        parsed = Image.Exif()
        parsed.load(exif)
        # (get_ifd would cache the GPS IFD and tobytes would write it back: delete the pointer only)
        if GPS_IFD_POINTER in parsed:
            del parsed[GPS_IFD_POINTER]
        if not len(parsed):
            return None
        rewritten = parsed.tobytes()
    except Exception as exc:  # Pillow raises many types on a malformed block
        log.warning("an EXIF block that cannot be parsed was dropped from a public output: %s", exc)
        return None
    return rewritten if rewritten.startswith(b"Exif\x00\x00") else b"Exif\x00\x00" + rewritten


#: what XML 1.0 cannot hold (control characters, lone surrogates): replaced, so a request's text
#: can never make the packet malformed or fail to encode
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _text(value: object) -> str:
    return escape(_NOT_XML.sub("\ufffd", str(value)))


def parameters_xmp(software: str, stages: Sequence[StageParameters]) -> bytes:
    """An XMP packet naming the tool and every stage: model, scale, weights sha256, settings."""
    buffer = io.StringIO()
    buffer.write('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n')
    buffer.write('<x:xmpmeta xmlns:x="adobe:ns:meta/">\n')
    buffer.write('<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n')
    buffer.write(
        f'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
        f'xmlns:satscale="{XMP_NAMESPACE}" xmp:CreatorTool={quoteattr(_NOT_XML.sub("", software))} '
        f"satscale:Scale={quoteattr(str(math.prod(stage.scale for stage in stages)))}>\n"
    )
    buffer.write("<satscale:Pipeline><rdf:Seq>\n")
    for stage in stages:
        buffer.write('<rdf:li rdf:parseType="Resource">')
        buffer.write(f"<satscale:Model>{_text(stage.model)}</satscale:Model>")
        buffer.write(f"<satscale:StageScale>{stage.scale}</satscale:StageScale>")
        buffer.write(f"<satscale:WeightsSHA256>{_text(stage.weights_sha256)}</satscale:WeightsSHA256>")
        for name, value in sorted(stage.settings.items()):
            if value is not None:
                buffer.write(
                    f'<satscale:Setting rdf:parseType="Resource"><satscale:Name>{_text(name)}</satscale:Name>'
                    f"<satscale:Value>{_text(value)}</satscale:Value></satscale:Setting>"
                )
        buffer.write("</rdf:li>\n")
    buffer.write("</rdf:Seq></satscale:Pipeline>\n</rdf:Description>\n</rdf:RDF>\n</x:xmpmeta>\n")
    buffer.write('<?xpacket end="w"?>')
    return buffer.getvalue().encode("utf-8")
