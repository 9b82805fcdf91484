"""The look: Qt's Fusion style with a dark palette (pictures read best on a neutral dark ground,
as in most image editors) and a few accents: the Generate button, section headings, the drop zone."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

ACCENT = "#3d8bfd"

STYLESHEET = f"""
QWidget#controlColumn, QWidget#leftPane, QWidget#trainColumn, QWidget#trainLeftPane,
QWidget#evaluateColumn {{ background: #232326; }}
QWidget#rightPane, QWidget#setupPage, QWidget#trainRightPane {{ background: #1c1c1e; }}
QFrame#section, QFrame#modelRow {{ background: #2b2b2f; border: 1px solid #38383d; border-radius: 8px; }}
QFrame#section QLabel, QFrame#modelRow QLabel {{ background: transparent; border: none; }}
QLabel#sectionTitle {{ font-size: 11pt; font-weight: 600; color: #f2f2f5; }}
QLabel#pageTitle {{ font-size: 15pt; font-weight: 600; color: #f2f2f5; }}
QLabel#summary {{ font-size: 10.5pt; color: #dcdce0; }}
QLabel#hint, QLabel#caption {{ color: #9a9aa2; }}
QLabel#fieldLabel {{ color: #c8c8ce; }}
QLabel#tokenCount {{ color: #8a8a92; font-size: 8.5pt; }}
QLabel#tokenCount[warning="true"] {{ color: #e0803a; }}
QLabel#pathLabel {{ color: #b8b8c0; font-family: monospace; }}
QLabel#referenceName {{ font-weight: 600; }}
QFrame#referenceCard {{ background: #323237; border: 1px solid #414147; border-radius: 6px; }}
QFrame#section QLabel#dropZone {{
    border: 2px dashed #55555c; border-radius: 8px; color: #a8a8b0; background: #26262a;
}}
QFrame#section[dropping="true"] QLabel#dropZone {{ border-color: {ACCENT}; color: #ffffff; }}
QFrame#section QLabel#referenceThumb {{ background: #1c1c1e; border: 1px solid #45454b; border-radius: 4px; }}
QFrame#modelRow QLabel#statusIcon {{ font-size: 20pt; color: #e0803a; }}
QFrame#modelRow QLabel#statusIcon[ok="true"] {{ color: #4caf50; }}
QStatusBar QLabel {{ padding: 0 10px; color: #b8b8c0; }}
QWidget#generatePanel {{ background: #26262a; border-top: 1px solid #38383d; }}
QPushButton#generateButton, QPushButton#accentButton {{
    background: {ACCENT}; color: white; font-size: 13pt; font-weight: 600;
    border: none; border-radius: 8px; padding: 6px 18px;
}}
QPushButton#accentButton {{ font-size: 10pt; padding: 6px 14px; }}
QPushButton#generateButton:hover, QPushButton#accentButton:hover {{ background: #5a9dfd; }}
QPushButton#generateButton:pressed {{ background: #2f6fd0; }}
QPushButton#accentButton:disabled {{ background: #3a3a40; color: #77777f; }}
QPushButton#cancelButton {{ font-size: 11pt; border-radius: 8px; }}
QPushButton:checked {{ background: #34507a; border: 1px solid {ACCENT}; color: white; }}
QProgressBar {{ background: #1c1c1e; border: none; border-radius: 4px; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 4px; }}
QListWidget#gallery {{ background: #232326; border: 1px solid #38383d; border-radius: 6px; }}
QListWidget#gallery::item {{ border: 2px solid transparent; border-radius: 4px; }}
QListWidget#gallery::item:selected {{ background: transparent; border: 2px solid {ACCENT}; }}
QTabBar::tab {{ padding: 8px 22px; font-size: 10.5pt; }}
QPushButton#statusLink {{ color: #9fbfff; text-align: right; padding: 0 6px; }}
QFrame#sweepCell {{ background: #26262a; border: 2px solid transparent; border-radius: 6px; }}
QFrame#sweepCell[balance="true"] {{ border: 2px solid #ffc400; background: #2e2a1e; }}
QFrame#sweepCell[balance="true"] QLabel#sweepTitle {{ color: #ffc400; font-weight: 600; }}
QLabel#sweepRowLabel {{ color: #dcdce0; font-weight: 600; }}
"""


def apply_theme(app: QApplication) -> None:
    app.setStyle("Fusion")
    palette = QPalette()
    colors = {
        QPalette.ColorRole.Window: "#232326",
        QPalette.ColorRole.WindowText: "#e6e6ea",
        QPalette.ColorRole.Base: "#1c1c1e",
        QPalette.ColorRole.AlternateBase: "#2b2b2f",
        QPalette.ColorRole.ToolTipBase: "#f5f5f7",
        QPalette.ColorRole.ToolTipText: "#1c1c1e",
        QPalette.ColorRole.PlaceholderText: "#7c7c84",
        QPalette.ColorRole.Text: "#e6e6ea",
        QPalette.ColorRole.Button: "#38383d",
        QPalette.ColorRole.ButtonText: "#e6e6ea",
        QPalette.ColorRole.BrightText: "#ffffff",
        QPalette.ColorRole.Highlight: ACCENT,
        QPalette.ColorRole.HighlightedText: "#ffffff",
        QPalette.ColorRole.Link: "#9fbfff",
    }
    for role, color in colors.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6c6c74"))
    app.setPalette(palette)
    app.setStyleSheet(STYLESHEET)
