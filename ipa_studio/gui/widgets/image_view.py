"""A large image view with zoom: fit to the window by default, mouse wheel to zoom, drag to pan."""

from __future__ import annotations

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap, QWheelEvent
from PySide6.QtWidgets import QGraphicsPixmapItem, QGraphicsScene, QGraphicsView, QWidget

MAX_ZOOM = 32.0


class ZoomableView(QGraphicsView):
    """What every picture view here shares: fit to the window until the user zooms, wheel zoom
    under the mouse, a placeholder text while empty. Subclasses say what ``has_image`` means and
    may react to zoom changes in ``_zoom_applied``."""

    zoom_changed = Signal(float)  # 1.0 = one image pixel per screen pixel
    min_zoom = 0.05

    def __init__(self, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self._placeholder = placeholder
        self._fit = True
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setBackgroundBrush(QColor(28, 28, 30))
        self.setFrameShape(QGraphicsView.Shape.NoFrame)
        self.setMinimumSize(240, 240)

    def has_image(self) -> bool:
        raise NotImplementedError

    def placeholder(self) -> str:
        return self._placeholder

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.viewport().update()

    def _zoom_applied(self) -> None:
        """Called after every zoom change."""

    # ------------------------------------------------------------------ zoom
    def zoom(self) -> float:
        return self.transform().m11()

    def fit(self) -> None:
        self._fit = True
        if self.has_image():
            self.fitInView(self.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
            self.zoom_changed.emit(self.zoom())
            self._zoom_applied()

    def actual_size(self) -> None:
        self.set_zoom(1.0)

    def zoom_by(self, factor: float) -> None:
        self.set_zoom(self.zoom() * factor)

    def set_zoom(self, zoom: float) -> None:
        self._fit = False
        zoom = min(max(zoom, self.min_zoom), MAX_ZOOM)
        self.resetTransform()
        self.scale(zoom, zoom)
        self.zoom_changed.emit(zoom)
        self._zoom_applied()

    # ------------------------------------------------------------------ events
    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        if not self.has_image():
            return
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.25**steps)

    def resizeEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        super().resizeEvent(event)
        if self._fit:
            self.fit()

    def drawForeground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt override
        if self.has_image() or not self._placeholder:
            return
        painter.save()
        painter.resetTransform()
        painter.setPen(QColor(150, 150, 155))
        font = painter.font()
        font.setPointSizeF(font.pointSizeF() * 1.2)
        painter.setFont(font)
        painter.drawText(
            self.viewport().rect().adjusted(24, 24, -24, -24),
            Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
            self._placeholder,
        )
        painter.restore()


class ImageView(ZoomableView):
    """The result view: drag to pan, double-click toggles fit / 1:1."""

    def __init__(self, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(placeholder, parent)
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.scene().addItem(self._item)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)

    # ------------------------------------------------------------------ content
    def set_image(self, image: QImage | None, *, logical_size: tuple[int, int] | None = None) -> None:
        """Show ``image``. ``logical_size`` stretches a small preview to the size it stands for, so
        the live preview and the final picture line up and zoom the same."""
        if image is None or image.isNull():
            self._item.setPixmap(QPixmap())
            self.scene().setSceneRect(QRectF())
            self.viewport().update()
            return
        pixmap = QPixmap.fromImage(image)
        if logical_size is not None and (pixmap.width(), pixmap.height()) != logical_size:
            # Previews are 1/8 size: scaling once here is cheaper than a scaled item transform per paint.
            pixmap = pixmap.scaled(
                *logical_size,
                Qt.AspectRatioMode.IgnoreAspectRatio,
                Qt.TransformationMode.SmoothTransformation,
            )
        self._item.setPixmap(pixmap)
        self.scene().setSceneRect(QRectF(pixmap.rect()))
        if self._fit:
            self.fit()

    def has_image(self) -> bool:
        return not self._item.pixmap().isNull()

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802, ANN001 - Qt override
        if self._fit:
            self.actual_size()
        else:
            self.fit()
