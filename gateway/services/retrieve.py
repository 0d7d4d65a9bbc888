"""Retrieving stored instances: whole files, metadata, frames, bulk data, and rendered images.

Whole-file retrieval streams from disk in chunks; nothing here holds a series in memory.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.multival import MultiValue
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import Engine, select

from gateway.dicom.json_model import absolutise_bulkdata
from gateway.store.files import FileStore
from gateway.store.models import Instance, Series, Study

# Media types of compressed frames (PS3.18 Table 8.7.4-1 and 8.7.3-5).
COMPRESSED_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg", "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg", "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls", "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2", "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx", "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc", "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg", "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4", "1.2.840.10008.1.2.4.103": "video/mp4",
}
NATIVE_TRANSFER_SYNTAXES = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
                                      "1.2.840.10008.1.2.1.99"})
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


class NotFound(LookupError):
    pass


class NotAcceptable(ValueError):
    """The instance cannot be delivered in the representation asked for."""


@dataclass(frozen=True)
class StoredInstance:
    pk: int
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    file_path: str
    file_size: int
    number_of_frames: int | None

    @property
    def is_encapsulated(self) -> bool:
        return self.transfer_syntax_uid not in NATIVE_TRANSFER_SYNTAXES


@dataclass(frozen=True)
class Frame:
    data: bytes
    media_type: str
    transfer_syntax_uid: str | None


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI LUT functions of PS3.3 C.11.2.1.2 mapped to 0..255."""
    function = function.upper()
    if function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        scaled = (values - center) / max(width, 1e-6) + 0.5
    else:
        scaled = ((values - (center - 0.5)) / max(width - 1.0, 1e-6)) + 0.5
    return np.clip(scaled, 0.0, 1.0) * 255.0


class RetrieveService:
    def __init__(self, engine: Engine, files: FileStore) -> None:
        self.engine = engine
        self.files = files

    # -- locating ------------------------------------------------------------------------------------------

    def instances(self, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[StoredInstance]:
        """Instances of a study/series/instance in series and instance-number order; NotFound if none."""
        statement = (select(Instance.pk, Study.study_instance_uid, Series.series_instance_uid,
                            Instance.sop_instance_uid, Instance.sop_class_uid, Instance.transfer_syntax_uid,
                            Instance.file_path, Instance.file_size, Instance.number_of_frames)
                     .join(Series, Series.pk == Instance.series_pk).join(Study, Study.pk == Instance.study_pk)
                     .where(Study.study_instance_uid == study_uid)
                     .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk))
        if series_uid is not None:
            statement = statement.where(Series.series_instance_uid == series_uid)
        if sop_uid is not None:
            statement = statement.where(Instance.sop_instance_uid == sop_uid)
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        if not rows:
            raise NotFound(self._describe(study_uid, series_uid, sop_uid) + " is not stored here")
        return [StoredInstance(*row) for row in rows]

    @staticmethod
    def _describe(study_uid: str, series_uid: str | None, sop_uid: str | None) -> str:
        if sop_uid:
            return f"instance {sop_uid} of series {series_uid} in study {study_uid}"
        if series_uid:
            return f"series {series_uid} of study {study_uid}"
        return f"study {study_uid}"

    def instance(self, study_uid: str, series_uid: str, sop_uid: str) -> StoredInstance:
        return self.instances(study_uid, series_uid, sop_uid)[0]

    def path(self, instance: StoredInstance) -> Path:
        return self.files.absolute(instance.file_path)

    # -- whole instances -----------------------------------------------------------------------------------

    def file_chunks(self, instance: StoredInstance) -> Iterator[bytes]:
        return self.files.iter_chunks(instance.file_path)

    def transcode(self, instance: StoredInstance, transfer_syntax: str) -> bytes:
        """The instance re-encoded in ``transfer_syntax`` (only Explicit VR Little Endian is produced)."""
        if transfer_syntax != ExplicitVRLittleEndian:
            raise NotAcceptable(f"transcoding to {transfer_syntax} is not supported; stored as "
                                f"{instance.transfer_syntax_uid}, Explicit VR Little Endian available")
        dataset = dcmread(self.path(instance))
        try:
            if instance.is_encapsulated:
                dataset.decompress(generate_instance_uid=False)
            elif instance.transfer_syntax_uid == BIG_ENDIAN and "PixelData" in dataset:
                pixels = dataset.pixel_array
                dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
                dataset["PixelData"].VR = "OW" if dataset.BitsAllocated > 8 else "OB"
        except Exception as exc:  # no decoder for this compression, or corrupt pixel data
            raise NotAcceptable(f"cannot decode {instance.transfer_syntax_uid} pixel data to transcode: "
                                f"{exc}") from exc
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        buffer = io.BytesIO()
        dataset.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
        return buffer.getvalue()

    # -- metadata ------------------------------------------------------------------------------------------

    def metadata_texts(self, instances: list[StoredInstance], base_url: str,
                       batch: int = 500) -> Iterator[str]:
        """DICOM JSON text of each instance with absolute BulkDataURIs, fetched in batches."""
        for start in range(0, len(instances), batch):
            chunk = instances[start:start + batch]
            with self.engine.connect() as connection:
                texts = dict(connection.execute(select(Instance.pk, Instance.metadata_json)
                                                .where(Instance.pk.in_([i.pk for i in chunk]))).all())
            for item in chunk:
                url = (f"{base_url}/studies/{item.study_uid}/series/{item.series_uid}/instances/{item.sop_uid}")
                yield absolutise_bulkdata(texts[item.pk], url)

    # -- frames and bulk data ------------------------------------------------------------------------------

    def _dataset(self, instance: StoredInstance, defer: bool = True) -> Dataset:
        return dcmread(self.path(instance), defer_size=1024 if defer else None)

    @staticmethod
    def _frame_geometry(dataset: Dataset) -> tuple[int, int]:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        bits = int(dataset.BitsAllocated)
        samples = int(dataset.get("SamplesPerPixel", 1))
        frame_bits = int(dataset.Rows) * int(dataset.Columns) * samples * bits
        return frames, frame_bits

    def frames(self, instance: StoredInstance, numbers: list[int], accept_compressed: bool,
               accept_native: bool) -> list[Frame]:
        dataset = self._dataset(instance, defer=instance.transfer_syntax_uid != DEFLATED)
        if "PixelData" not in dataset:
            raise NotFound(f"instance {instance.sop_uid} has no pixel data (no frames)")
        frame_count, frame_bits = self._frame_geometry(dataset)
        bad = [n for n in numbers if n < 1 or n > frame_count]
        if bad:
            raise NotFound(f"frame {bad[0]} does not exist: instance {instance.sop_uid} has {frame_count} "
                           f"frame(s)")
        if instance.is_encapsulated:
            media_type = COMPRESSED_MEDIA_TYPES.get(instance.transfer_syntax_uid, "application/octet-stream")
            if accept_compressed:
                all_frames = list(generate_frames(dataset.PixelData, number_of_frames=frame_count))
                return [Frame(all_frames[n - 1], media_type, instance.transfer_syntax_uid) for n in numbers]
            if not accept_native:
                raise NotAcceptable(f"frames are stored as {media_type}; ask for that media type")
            try:
                pixels = dcmread(self.path(instance)).pixel_array
            except Exception as exc:
                raise NotAcceptable(f"frames are stored as {media_type} ({instance.transfer_syntax_uid}) and "
                                    f"cannot be decoded here: {exc}; ask for {media_type}") from exc
            if frame_count == 1:
                pixels = pixels[np.newaxis]
            return [Frame(np.ascontiguousarray(pixels[n - 1]).astype(pixels.dtype.newbyteorder("<")).tobytes(),
                          "application/octet-stream", None) for n in numbers]
        if not accept_native:
            raise NotAcceptable("frames are stored uncompressed; ask for application/octet-stream")
        return [Frame(self._native_frame(instance, dataset, n, frame_bits), "application/octet-stream", None)
                for n in numbers]

    def _native_frame(self, instance: StoredInstance, dataset: Dataset, number: int, frame_bits: int) -> bytes:
        start_bit = (number - 1) * frame_bits
        raw = dataset.get_item(0x7FE00010)
        if instance.transfer_syntax_uid == DEFLATED or getattr(raw, "value", None) is not None:
            data = dataset.PixelData
            chunk = self._bit_slice(data, start_bit, frame_bits)
        else:
            byte_start, byte_end = start_bit // 8, (start_bit + frame_bits + 7) // 8
            with open(self.path(instance), "rb") as handle:
                handle.seek(raw.value_tell + byte_start)
                chunk = handle.read(byte_end - byte_start)
            chunk = self._bit_slice(chunk, start_bit % 8, frame_bits)
        if instance.transfer_syntax_uid == BIG_ENDIAN and int(dataset.BitsAllocated) > 8:
            width = int(dataset.BitsAllocated) // 8
            chunk = np.frombuffer(chunk, dtype=f">u{width}").astype(f"<u{width}").tobytes()
        return chunk

    @staticmethod
    def _bit_slice(data: bytes, start_bit: int, length_bits: int) -> bytes:
        if start_bit % 8 == 0 and length_bits % 8 == 0:
            return bytes(data[start_bit // 8:(start_bit + length_bits) // 8])
        # Single-bit (BitsAllocated 1) frames need not start on a byte boundary; bits are little-endian.
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return np.packbits(bits[start_bit:start_bit + length_bits], bitorder="little").tobytes()

    def bulkdata(self, instance: StoredInstance, path: list[str]) -> tuple[bytes, str]:
        """The value of a bulk data element addressed by tag path (e.g. ['7FE00010'] or ['00540016','0',…])."""
        dataset: Any = self._dataset(instance, defer=False)
        element = None
        try:
            for index, token in enumerate(path):
                if index % 2 == 0:
                    element = dataset[int(token, 16)]
                else:
                    dataset = element.value[int(token)]
        except (KeyError, ValueError, IndexError, TypeError) as exc:
            raise NotFound(f"no bulk data at {'/'.join(path)} in instance {instance.sop_uid}") from exc
        if element is None or len(path) % 2 == 0 or element.VR == "SQ":
            raise NotFound(f"{'/'.join(path)} does not address a bulk data element")
        value = element.value
        if int(element.tag) == 0x7FE00010 and instance.is_encapsulated:
            frames = list(generate_frames(value, number_of_frames=int(dataset.get("NumberOfFrames", 1) or 1)))
            media_type = COMPRESSED_MEDIA_TYPES.get(instance.transfer_syntax_uid, "application/octet-stream")
            return b"".join(frames) if len(frames) == 1 else value, media_type
        if isinstance(value, str):
            value = value.encode()
        return bytes(value), "application/octet-stream"

    # -- rendering -----------------------------------------------------------------------------------------

    def render(self, instance: StoredInstance, *, frame: int | None = None,
               window: tuple[float, float, str] | None = None, viewport: tuple[int, int] | None = None,
               media_type: str = "image/jpeg", quality: int = 90) -> bytes:
        from PIL import Image
        from pydicom.pixels import apply_modality_lut

        dataset = dcmread(self.path(instance))
        if "PixelData" not in dataset:
            raise NotAcceptable(f"instance {instance.sop_uid} has no pixel data to render")
        try:
            pixels = dataset.pixel_array
        except Exception as exc:
            raise NotAcceptable(f"cannot decode the pixel data ({instance.transfer_syntax_uid}): {exc}") from exc
        frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1))
        index = (frame or 1) - 1
        if index < 0 or index >= frame_count:
            raise NotFound(f"frame {frame} does not exist: the instance has {frame_count} frame(s)")
        if frame_count > 1:
            pixels = pixels[index]
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
        if samples == 1:
            values = apply_modality_lut(pixels, dataset).astype(np.float64)
            if window is None:
                window = self._default_window(dataset, values)
            image_values = _window(values, *window)
            if photometric == "MONOCHROME1":
                image_values = 255.0 - image_values
            image = Image.fromarray(image_values.astype(np.uint8), mode="L")
        else:
            if photometric != "RGB":
                from pydicom.pixels import convert_color_space

                pixels = convert_color_space(pixels, photometric, "RGB")
            if pixels.dtype != np.uint8:
                pixels = (pixels.astype(np.float64) / max(float(pixels.max()), 1.0) * 255).astype(np.uint8)
            image = Image.fromarray(pixels, mode="RGB")
        if viewport is not None:
            image.thumbnail(viewport, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        if media_type == "image/png":
            image.save(buffer, format="PNG")
        elif media_type == "image/gif":
            image.save(buffer, format="GIF")
        else:
            image.save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    @staticmethod
    def _default_window(dataset: Dataset, values: np.ndarray) -> tuple[float, float, str]:
        center, width = dataset.get("WindowCenter"), dataset.get("WindowWidth")
        if center is not None and width is not None:
            try:
                first_center, first_width = _first_number(center), _first_number(width)
                if first_width > 0:
                    return first_center, first_width, str(dataset.get("VOILUTFunction", "LINEAR"))
            except (TypeError, ValueError, IndexError):
                pass
        low, high = float(np.min(values)), float(np.max(values))
        return (low + high) / 2.0, max(high - low, 1.0), "LINEAR_EXACT"

    def representative(self, instances: list[StoredInstance]) -> StoredInstance:
        """The instance a thumbnail of a series or study shows: the middle one of the first series."""
        first_series = [i for i in instances if i.series_uid == instances[0].series_uid]
        return first_series[len(first_series) // 2]


def _first_number(value: Any) -> float:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)
