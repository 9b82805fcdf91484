"""The installer window: welcome (or Repair / Update / Uninstall), folder, hardware, progress, done.

Only this module uses Qt; the work itself is :class:`ipa_launcher.installer.Runner`, run on a
QThread, talking to the window through signals.
"""

from __future__ import annotations

import argparse
import html
import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QThread, QTimer, Signal
from PySide6.QtGui import QFont, QIcon, QPixmap
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from . import APP_ID, APP_NAME, LAUNCHER_VERSION, state
from .env import index_settings
from .hardware import Hardware, detect
from .installer import Cancelled, InstallError, Plan, Runner, start_app, user_data_folders
from .locks import DEVICE_NAMES, LockIndex, NoLockError, Recommendation, load_index, recommend, select_lock
from .paths import GB, check_folder, default_install_folder, nearest_existing
from .payload import Payload, PayloadError, Wheelhouse, find_payload, find_wheelhouse

STYLE = """
QWidget { background: #232326; color: #e6e6ea; font-size: 10.5pt; }
QLabel#title { font-size: 17pt; font-weight: 600; color: #f2f2f5; }
QLabel#pageTitle { font-size: 13pt; font-weight: 600; color: #f2f2f5; }
QLabel#hint { color: #a8a8b0; }
QLabel#problem { background: #3a2d22; border: 1px solid #6b4a2a; border-radius: 6px; padding: 8px; }
QLabel#error { background: #3d2326; border: 1px solid #7a3038; border-radius: 6px; padding: 8px; }
QLabel#ok { background: #203326; border: 1px solid #2f6b3f; border-radius: 6px; padding: 8px; }
QLineEdit, QPlainTextEdit {
    background: #1c1c1e; border: 1px solid #45454b; border-radius: 4px; padding: 4px;
}
QPlainTextEdit { font-family: monospace; font-size: 9pt; }
QPushButton { background: #34343a; border: 1px solid #4a4a52; border-radius: 5px; padding: 6px 16px; }
QPushButton:hover { background: #3e3e45; }
QPushButton:disabled { color: #6f6f77; }
QPushButton#accent { background: #3d8bfd; border: none; color: white; font-weight: 600; }
QPushButton#accent:hover { background: #5a9dfd; }
QPushButton#accent:disabled { background: #3a3a40; color: #77777f; }
QPushButton#danger { background: #8a2f38; border: none; color: white; font-weight: 600; }
QRadioButton:disabled, QCheckBox:disabled { color: #77777f; }
QCheckBox::indicator, QRadioButton::indicator {
    width: 14px; height: 14px; border: 1px solid #8a8a92; background: #1c1c1e;
}
QRadioButton::indicator { border-radius: 8px; }
QCheckBox::indicator { border-radius: 3px; }
QCheckBox::indicator:checked, QRadioButton::indicator:checked { background: #3d8bfd; border-color: #9fc4ff; }
QCheckBox::indicator:disabled, QRadioButton::indicator:disabled {
    border-color: #4a4a52; background: #2a2a2e;
}
QProgressBar { background: #1c1c1e; border: none; border-radius: 5px; height: 12px; text-align: center; }
QProgressBar::chunk { background: #3d8bfd; border-radius: 5px; }
"""


def _label(text: str, name: str = "", wrap: bool = True) -> QLabel:
    label = QLabel(text)
    if name:
        label.setObjectName(name)
    label.setWordWrap(wrap)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


def _gb(n: int) -> str:
    return f"{n / GB:.1f} GB"


class Worker(QObject):
    progress = Signal(float, str)
    log = Signal(str)
    finished = Signal(bool, str)

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan
        self.cancel = threading.Event()
        self.started_at = 0.0

    def run(self) -> None:
        self.started_at = time.monotonic()
        runner = Runner(self.plan, self.progress.emit, self.log.emit, self.cancel)
        try:
            runner.run()
        except Cancelled:
            self.finished.emit(
                False, "Cancelled. The installation is not finished; run the installer again to complete it."
            )
        except InstallError as exc:
            self.finished.emit(False, str(exc))
        except Exception as exc:  # a bug must still end on a page that says something
            self.finished.emit(False, f"Unexpected problem: {type(exc).__name__}: {exc}")
        else:
            self.finished.emit(True, "")


class InstallerWindow(QMainWindow):
    """The whole installer. ``payload``/``hardware``/``index`` are injectable for the docs' screenshots."""

    def __init__(
        self,
        system: str,
        payload: Payload | None,
        hardware: Hardware,
        index: LockIndex | None,
        wheelhouse: Wheelhouse | None,
        folder: Path | None = None,
        payload_error: str = "",
    ) -> None:
        super().__init__()
        self.system, self.payload, self.hardware, self.index = system, payload, hardware, index
        self.wheelhouse = wheelhouse
        self.payload_error = payload_error
        self.action = "install"
        self.folder = folder or self._existing_install() or default_install_folder(system)
        self.recommendation: Recommendation | None = None
        self.thread: QThread | None = None
        self.worker: Worker | None = None
        self.setWindowTitle(f"{APP_NAME} Installer")
        self.resize(760, 560)

        central = QWidget()
        outer = QVBoxLayout(central)
        outer.setContentsMargins(28, 22, 28, 20)
        head = QHBoxLayout()
        self.logo = QLabel()
        self.logo.setFixedSize(56, 56)
        head.addWidget(self.logo)
        titles = QVBoxLayout()
        titles.addWidget(_label(APP_NAME, "title"))
        titles.addWidget(_label(f"Installer {LAUNCHER_VERSION}", "hint"))
        head.addLayout(titles, 1)
        outer.addLayout(head)
        outer.addSpacing(10)
        self.pages = QStackedWidget()
        outer.addWidget(self.pages, 1)
        nav = QHBoxLayout()
        self.back = QPushButton("Back")
        self.next = QPushButton("Next")
        self.next.setObjectName("accent")
        self.back.clicked.connect(self.go_back)
        self.next.clicked.connect(self.go_next)
        nav.addStretch(1)
        nav.addWidget(self.back)
        nav.addWidget(self.next)
        outer.addLayout(nav)
        self.setCentralWidget(central)

        self.welcome = self._welcome_page()
        self.folder_page = self._folder_page()
        self.hardware_page = self._hardware_page()
        self.progress_page = self._progress_page()
        self.done_page = self._done_page()
        self.uninstall_page = self._uninstall_page()
        for page in (self.welcome, self.folder_page, self.hardware_page, self.progress_page, self.done_page,
                     self.uninstall_page):  # fmt: skip
            self.pages.addWidget(page)
        self.show_page(self.welcome)

    def set_icon(self, icon_file: Path) -> None:
        if icon_file.is_file():
            self.setWindowIcon(QIcon(str(icon_file)))
            self.logo.setPixmap(
                QPixmap(str(icon_file)).scaled(
                    56, 56, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
                )
            )

    # -- pages ----------------------------------------------------------------------------------
    def _existing_install(self) -> Path | None:
        for folder in [*state.known_installs(), default_install_folder(self.system)]:
            if state.status(folder) != "absent":
                return folder
        return None

    def _welcome_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.welcome_title = _label("", "pageTitle")
        self.welcome_text = _label("")
        self.welcome_status = _label("", "ok")
        layout.addWidget(self.welcome_title)
        layout.addWidget(self.welcome_text)
        layout.addSpacing(8)
        layout.addWidget(self.welcome_status)
        self.source_label = _label("", "hint")
        layout.addWidget(self.source_label)
        buttons = QHBoxLayout()
        self.start_button = QPushButton(f"Start {APP_NAME}")
        self.start_button.setObjectName("accent")
        self.update_button = QPushButton("Update")
        self.repair_button = QPushButton("Repair")
        self.remove_button = QPushButton("Uninstall…")
        self.start_button.clicked.connect(self.start_installed)
        self.update_button.clicked.connect(lambda: self.begin_maintenance("update"))
        self.repair_button.clicked.connect(lambda: self.begin_maintenance("repair"))
        self.remove_button.clicked.connect(self.ask_uninstall)
        for b in (self.start_button, self.update_button, self.repair_button, self.remove_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        layout.addLayout(buttons)
        layout.addStretch(1)
        return page

    def refresh_welcome(self) -> None:
        status = state.status(self.folder)
        record = state.read(self.folder)
        installed = status != "absent"
        if self.wheelhouse is not None:
            source = (
                f"Packages come from the offline bundle in {self.wheelhouse.root}: "
                "no internet connection is needed."
            )
        else:
            where = index_settings(system=self.system).describe()
            source = f"Packages are downloaded (about 2–4 GB) from {where}."
        self.source_label.setText(source)
        if not installed:
            self.welcome_title.setText(f"Install {APP_NAME}")
            self.welcome_text.setText(
                f"{APP_NAME} makes pictures from reference images with Stable Diffusion, "
                "on your own computer. "
                "This installer sets up everything it needs in one folder: it checks your graphics card, "
                "installs the matching version of PyTorch, makes sure it works, and adds "
                f"{APP_NAME} to your {'Start menu' if self.system == 'windows' else 'applications'}.\n\n"
                "Nothing is sent anywhere. The models (about 4 GB) are downloaded later, inside the app, "
                "when you ask for them."
            )
            self.welcome_status.hide()
        else:
            self.welcome_title.setText(
                f"{APP_NAME} is installed" if status == "complete" else "The installation is not finished"
            )
            self.welcome_status.show()
            if status == "complete" and record:
                self.welcome_status.setObjectName("ok")
                self.welcome_status.setText(
                    f"{APP_NAME} {record.app_version} in {self.folder}, running on the "
                    f"{DEVICE_NAMES.get(record.device, record.device)}."
                )
                self.welcome_text.setText(
                    "Update installs this installer's version; Repair reinstalls everything (use it "
                    "when the app does not start); Uninstall removes the app and keeps your models, "
                    "pictures and settings unless you ask otherwise."
                )
            else:
                self.welcome_status.setObjectName("error")
                why = f" The last attempt ended with: {record.error}" if record and record.error else ""
                self.welcome_status.setText(
                    f"The installation in {self.folder} was not completed, so it cannot start.{why}"
                )
                self.welcome_text.setText("Repair finishes it; Uninstall removes what was installed.")
            self.welcome_status.style().polish(self.welcome_status)
        self.start_button.setVisible(status == "complete")
        self.update_button.setVisible(status == "complete")
        self.repair_button.setVisible(installed)
        self.remove_button.setVisible(installed)
        self.next.setVisible(not installed)
        self.next.setText("Install…")
        if self.payload_error:
            self.welcome_status.setObjectName("error")
            self.welcome_status.setText(self.payload_error)
            self.welcome_status.show()
            self.next.setEnabled(False)

    def _folder_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(_label("Where should IPA Studio be installed?", "pageTitle"))
        layout.addWidget(
            _label(
                "A folder of your own; no administrator rights are needed. Your models and pictures are "
                "kept elsewhere and are not affected by this choice.",
                "hint",
            )
        )
        row = QHBoxLayout()
        self.folder_edit = QLineEdit()
        self.folder_edit.textChanged.connect(self.check_folder)
        browse = QPushButton("Choose…")
        browse.clicked.connect(self.browse)
        row.addWidget(self.folder_edit, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        self.space_label = _label("", "hint")
        layout.addWidget(self.space_label)
        self.problem_box = QVBoxLayout()
        layout.addLayout(self.problem_box)
        layout.addStretch(1)
        return page

    def browse(self) -> None:
        start = str(nearest_existing(Path(self.folder_edit.text() or str(Path.home()))))
        chosen = QFileDialog.getExistingDirectory(self, "Install IPA Studio in", start)
        if chosen:
            self.folder_edit.setText(chosen)

    def needed_bytes(self) -> int:
        target = self._target()
        return target.installed_bytes if target else 6 * GB

    def check_folder(self) -> None:
        while self.problem_box.count():
            item = self.problem_box.takeAt(0)
            if item.widget():
                item.widget().deleteLater()
        text = self.folder_edit.text().strip()
        path = Path(text).expanduser() if text else Path()
        problems = check_folder(path, needed_bytes=self.needed_bytes(), system=self.system) if text else []
        try:
            import shutil

            free = shutil.disk_usage(nearest_existing(path)).free if text else 0
            self.space_label.setText(
                f"Needs about {_gb(self.needed_bytes())}; {_gb(free)} free on that disk."
            )
        except OSError:
            self.space_label.setText(f"Needs about {_gb(self.needed_bytes())}.")
        for problem in problems:
            mark = "✖" if problem.severity == "error" else "⚠"
            self.problem_box.addWidget(
                _label(f"{mark}  {problem.message}", "error" if problem.severity == "error" else "problem")
            )
        self.next.setEnabled(bool(text) and not any(p.severity == "error" for p in problems))

    def _hardware_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(_label("Your computer", "pageTitle"))
        self.hardware_summary = _label("")
        layout.addWidget(self.hardware_summary)
        layout.addSpacing(6)
        layout.addWidget(_label("Run IPA Studio on:", "hint"))
        self.device_group = QButtonGroup(page)
        self.device_buttons: dict[str, QRadioButton] = {}
        self.device_reasons: dict[str, QLabel] = {}
        for device in ("cuda", "mps", "cpu"):
            button = QRadioButton(DEVICE_NAMES[device])
            reason = _label("", "hint")
            reason.setContentsMargins(26, 0, 0, 6)
            self.device_group.addButton(button)
            self.device_buttons[device] = button
            self.device_reasons[device] = reason
            layout.addWidget(button)
            layout.addWidget(reason)
            button.toggled.connect(self._device_changed)
        self.hardware_warnings = _label("", "problem")
        layout.addWidget(self.hardware_warnings)
        self.lock_label = _label("", "hint")
        layout.addWidget(self.lock_label)
        layout.addStretch(1)
        return page

    def refresh_hardware(self) -> None:
        assert self.index is not None
        try:
            self.recommendation = recommend(self.hardware, self.index)
        except NoLockError as exc:
            self.hardware_summary.setText(str(exc))
            self.next.setEnabled(False)
            return
        rec = self.recommendation
        self.hardware_summary.setText(
            f"Found: {html.escape(self.hardware.summary())}.<br><b>{html.escape(rec.reason)}</b>"
        )
        self.hardware_summary.setTextFormat(Qt.TextFormat.RichText)
        shown = {c.device: c for c in rec.choices}
        for device, button in self.device_buttons.items():
            choice = shown.get(device)
            button.setVisible(choice is not None)
            self.device_reasons[device].setVisible(choice is not None)
            if choice is None:
                continue
            button.setEnabled(choice.usable)
            label = DEVICE_NAMES[device] + ("  (recommended)" if device == rec.device else "")
            button.setText(label)
            self.device_reasons[device].setText(choice.reason)
        self.device_buttons[rec.device].setChecked(True)
        self.hardware_warnings.setVisible(bool(rec.warnings))
        self.hardware_warnings.setText("⚠  " + "\n⚠  ".join(rec.warnings))
        self._device_changed()

    def selected_device(self) -> str:
        for device, button in self.device_buttons.items():
            if button.isChecked():
                return device
        return self.recommendation.device if self.recommendation else "cpu"

    def _target(self):
        if self.index is None:
            return None
        try:
            return select_lock(self.index, self.system, self.hardware.machine, self.selected_device())
        except NoLockError:
            return None

    def _device_changed(self) -> None:
        target = self._target()
        if target is not None:
            where = "the offline bundle" if self.wheelhouse else "the internet"
            build = {
                "cuda": "PyTorch built for NVIDIA GPUs (it runs on the CPU too)",
                "mps": "PyTorch for Apple Silicon",
            }
            words = build.get(target.devices[0], "PyTorch for the CPU")
            self.lock_label.setText(
                f"Installs {words}: about {target.installed_gb:.0f} GB on disk, from {where}."
            )
        self.next.setEnabled(target is not None)

    def _progress_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.progress_title = _label("Installing…", "pageTitle")
        layout.addWidget(self.progress_title)
        self.step_label = _label("")
        layout.addWidget(self.step_label)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        layout.addWidget(self.bar)
        self.eta_label = _label("", "hint")
        layout.addWidget(self.eta_label)
        details = QHBoxLayout()
        self.details_button = QPushButton("Hide details")
        self.details_button.clicked.connect(self.toggle_details)
        details.addWidget(self.details_button)
        details.addStretch(1)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        details.addWidget(self.cancel_button)
        layout.addLayout(details)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        layout.addWidget(self.log_view, 1)
        return page

    def toggle_details(self) -> None:
        visible = not self.log_view.isVisible()
        self.log_view.setVisible(visible)
        self.details_button.setText("Hide details" if visible else "Show details")

    def _done_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.done_title = _label("", "pageTitle")
        self.done_text = _label("")
        self.done_error = _label("", "error")
        self.done_error.hide()
        layout.addWidget(self.done_title)
        layout.addWidget(self.done_text)
        layout.addWidget(self.done_error)
        self.start_after = QCheckBox(f"Start {APP_NAME} now")
        self.start_after.setChecked(True)
        layout.addWidget(self.start_after)
        self.retry_button = QPushButton("Repair")
        self.retry_button.clicked.connect(lambda: self.begin_maintenance("repair"))
        row = QHBoxLayout()
        row.addWidget(self.retry_button)
        row.addStretch(1)
        layout.addLayout(row)
        layout.addStretch(1)
        return page

    def _uninstall_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(_label(f"Uninstall {APP_NAME}", "pageTitle"))
        self.uninstall_text = _label("")
        layout.addWidget(self.uninstall_text)
        layout.addSpacing(6)
        layout.addWidget(_label("Also delete (nothing here is deleted unless you tick it):", "hint"))
        self.remove_boxes: dict[str, QCheckBox] = {}
        for kind, words in (
            ("models", "your models"),
            ("pictures", "the pictures you made"),
            ("settings", "your settings"),
        ):
            box = QCheckBox(words)
            self.remove_boxes[kind] = box
            layout.addWidget(box)
        layout.addStretch(1)
        return page

    # -- navigation -----------------------------------------------------------------------------
    def show_page(self, page: QWidget) -> None:
        self.pages.setCurrentWidget(page)
        self.back.setVisible(page in (self.folder_page, self.hardware_page, self.uninstall_page))
        self.next.setVisible(True)
        self.next.setEnabled(True)
        self.next.setObjectName("accent")
        if page is self.welcome:
            self.refresh_welcome()
        elif page is self.folder_page:
            self.next.setText("Next")
            self.folder_edit.setText(str(self.folder))
            self.check_folder()
        elif page is self.hardware_page:
            self.next.setText("Install")
            self.refresh_hardware()
        elif page is self.progress_page:
            self.next.setVisible(False)
        elif page is self.done_page:
            self.next.setText("Finish")
        elif page is self.uninstall_page:
            self.next.setText("Uninstall")
            self.next.setObjectName("danger")
            folders = user_data_folders()
            for kind, box in self.remove_boxes.items():
                box.setText(f"{box.text().split(' (')[0]} ({folders[kind]})")
            self.uninstall_text.setText(f"Removes the app from {self.folder} and its shortcuts.")
        self.next.style().polish(self.next)

    def go_back(self) -> None:
        current = self.pages.currentWidget()
        self.show_page(self.folder_page if current is self.hardware_page else self.welcome)

    def go_next(self) -> None:
        current = self.pages.currentWidget()
        if current is self.welcome:
            self.action = "install"
            self.show_page(self.folder_page)
        elif current is self.folder_page:
            self.folder = Path(self.folder_edit.text().strip()).expanduser()
            self.show_page(self.hardware_page)
        elif current is self.hardware_page:
            self.run(self._plan(self.action, self.selected_device()))
        elif current is self.uninstall_page:
            remove = frozenset(k for k, b in self.remove_boxes.items() if b.isChecked())
            self.run(Plan("uninstall", self.folder, self.system, remove_data=remove))
        elif current is self.done_page:
            if self.start_after.isVisible() and self.start_after.isChecked():
                self.start_installed()
            else:
                self.close()

    def _plan(self, action: str, device: str) -> Plan:
        assert self.index is not None and self.payload is not None
        return Plan(
            action,
            self.folder,
            self.system,
            device=device,
            target=select_lock(self.index, self.system, self.hardware.machine, device),
            python=self.index.python,
            payload=self.payload,
            wheelhouse=self.wheelhouse,
            index=index_settings(system=self.system),
        )

    def begin_maintenance(self, action: str) -> None:
        record = state.read(self.folder)
        device = (
            record.device
            if record and record.device
            else (self.recommendation or recommend(self.hardware, self.index)).device
        )
        self.action = action
        self.run(self._plan(action, device))

    def ask_uninstall(self) -> None:
        self.show_page(self.uninstall_page)

    def start_installed(self) -> None:
        try:
            start_app(self.folder, self.system)
        except (InstallError, OSError) as exc:
            self.done_text.setText(str(exc))
            return
        # Stay open a moment so the click visibly did something, then step aside for the app.
        QTimer.singleShot(1500, self.close)

    # -- running --------------------------------------------------------------------------------
    def run(self, plan: Plan) -> None:
        words = {
            "install": "Installing",
            "repair": "Repairing",
            "update": "Updating",
            "uninstall": "Uninstalling",
        }
        self.progress_title.setText(f"{words[plan.action]} {APP_NAME}…")
        self.log_view.clear()
        self.bar.setValue(0)
        self.cancel_button.setEnabled(True)
        self.show_page(self.progress_page)
        self.thread = QThread(self)
        self.worker = Worker(plan)
        self.worker.moveToThread(self.thread)
        self.thread.started.connect(self.worker.run)
        self.worker.progress.connect(self.on_progress)
        self.worker.log.connect(self.log_view.appendPlainText)
        self.worker.finished.connect(self.on_finished)
        self.worker.finished.connect(self.thread.quit)
        self.thread.start()

    def on_progress(self, fraction: float, step: str) -> None:
        self.bar.setValue(round(fraction * 1000))
        self.step_label.setText(step)
        if self.worker and fraction > 0.12:
            spent = time.monotonic() - self.worker.started_at
            left = spent / fraction * (1 - fraction)
            self.eta_label.setText(f"{int(fraction * 100)} % · about {max(1, round(left / 60))} min left")

    def cancel(self) -> None:
        if self.worker:
            self.worker.cancel.set()
            self.cancel_button.setEnabled(False)
            self.step_label.setText("Cancelling…")

    def on_finished(self, ok: bool, message: str) -> None:
        plan = self.worker.plan if self.worker else None
        uninstall = plan is not None and plan.action == "uninstall"
        self.show_page(self.done_page)
        self.retry_button.setVisible(not ok and not uninstall)
        self.start_after.setVisible(ok and not uninstall)
        if ok and uninstall:
            self.done_title.setText(f"{APP_NAME} was removed")
            kept = [k for k in ("models", "pictures", "settings") if plan and k not in plan.remove_data]
            self.done_text.setText(
                ("Kept: your " + ", ".join(kept) + ".") if kept else "Everything was removed."
            )
        elif ok:
            self.done_title.setText(f"{APP_NAME} is ready")
            self.done_text.setText(
                f"Installed in {self.folder} and checked: it runs on the "
                f"{DEVICE_NAMES.get(plan.device, plan.device) if plan else ''}. Find it in your "
                f"{'Start menu' if self.system == 'windows' else 'applications'}. "
                "The first time, its Models tab helps you download the models."
            )
        else:
            self.done_title.setText("The installation did not finish")
            self.done_error.setText(message)
            self.done_text.setText("The details are in the log below.")
            self.done_page.layout().insertWidget(4, self.log_view, 1)  # keep the log in view
        self.done_error.setVisible(not ok)
        self.done_text.setVisible(True)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        if self.thread is not None and self.thread.isRunning():
            self.cancel()
            self.thread.wait(30000)
        super().closeEvent(event)


def make_window(args: argparse.Namespace, system: str) -> InstallerWindow:
    payload, index, error = None, None, ""
    try:
        payload = find_payload(getattr(args, "app_wheel", None))
        index = load_index(payload.locks_dir)
    except PayloadError as exc:
        error = str(exc)
    try:
        wheelhouse = find_wheelhouse(getattr(args, "wheelhouse", None))
    except PayloadError as exc:
        wheelhouse, error = None, str(exc)
    window = InstallerWindow(
        system, payload, detect(), index, wheelhouse, getattr(args, "folder", None), error
    )
    if payload is not None:
        window.set_icon(payload.icons_dir / "ipa-studio-128.png")
    return window


def run_window(args: argparse.Namespace, system: str, started: float) -> int:
    app = QApplication.instance() or QApplication([APP_NAME])
    app.setApplicationName(f"{APP_NAME} Installer")
    app.setDesktopFileName(APP_ID + ".Installer")
    app.setStyleSheet(STYLE)
    app.setFont(QFont(app.font().family(), 10))
    window = make_window(args, system)
    window.show()
    return app.exec()
