"""A video surface: paints the newest frame scaled to fit, keeping its aspect ratio, with a caption when empty;
and the local preview that feeds one from the camera."""

from __future__ import annotations

import asyncio
import contextlib

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

from .bridge import to_qimage


class VideoView(QWidget):
    def __init__(self, placeholder: str = "", parent=None):
        super().__init__(parent)
        self.image: QImage | None = None
        self.placeholder = placeholder
        self.frames = 0
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)

    def on_frame(self, image: QImage) -> None:
        self.image = image
        self.frames += 1
        self.update()

    def clear(self, placeholder: str | None = None) -> None:
        self.image = None
        if placeholder is not None:
            self.placeholder = placeholder
        self.update()

    def target_rect(self) -> QRect:
        if self.image is None or self.image.isNull():
            return QRect()
        size = self.image.size().scaled(self.size(), Qt.AspectRatioMode.KeepAspectRatio)
        x = (self.width() - size.width()) // 2
        y = (self.height() - size.height()) // 2
        return QRect(x, y, size.width(), size.height())

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("#111"))
        if self.image is not None:
            p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            p.drawImage(self.target_rect(), self.image)
        elif self.placeholder:
            p.setPen(QColor("#bbb"))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder)
        p.end()


async def show_preview(media, view: VideoView) -> None:
    """Paint your own camera (a LocalMedia's shared video) into `view` at half its frame rate, until cancelled."""
    track = media.subscribe_video()
    try:
        n = 0
        while True:
            frame = await track.recv()
            n += 1
            if n % 2 == 0:  # half the frame rate is plenty for a thumbnail
                view.on_frame(to_qimage(frame))
    except asyncio.CancelledError:
        pass
    finally:
        with contextlib.suppress(Exception):
            track.stop()
