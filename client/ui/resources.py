"""Where assets live (source tree or frozen app), and icons tinted to follow the system palette."""

from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt
from PySide6.QtGui import QIcon, QImage, QPainter, QPalette, QPixmap
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QApplication


def assets_dir() -> Path:
    frozen = getattr(sys, "_MEIPASS", None)
    return Path(frozen) / "assets" if frozen else Path(__file__).resolve().parents[2] / "assets"


def asset(name: str) -> Path:
    return assets_dir() / name


@cache
def _svg(name: str) -> str:
    return asset(f"icons/{name}.svg").read_text()


def icon(name: str, size: int = 24) -> QIcon:
    """An icon from assets/icons; neutral ones (stroke currentColor) take the palette's text colour."""
    color = QApplication.palette().color(QPalette.ColorRole.WindowText).name()
    svg = _svg(name).replace("currentColor", color)
    renderer = QSvgRenderer(QByteArray(svg.encode()))
    pix = QPixmap(QSize(size, size) * 2)
    pix.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pix)
    renderer.render(painter)
    painter.end()
    return QIcon(pix)


def app_icon() -> QIcon:
    renderer = QSvgRenderer(str(asset("icons/callbox.svg")))
    image = QImage(256, 256, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    return QIcon(QPixmap.fromImage(image))
