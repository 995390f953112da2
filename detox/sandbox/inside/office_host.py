"""The LibreOffice host: runs INSIDE the resident sandbox, under the system Python that has ``uno``.

Started by :mod:`detox.sandbox.libreoffice` as ``/usr/bin/python3 -I -B office_host.py SOFFICE BASE PIPE``
inside bubblewrap. It starts one headless LibreOffice with a throwaway profile under BASE (the
sandbox's private /tmp), connects to it over the UNO pipe PIPE (a Unix socket in /tmp: the sandbox has
no network at all), then converts one document to PDF per request for as long as its stdin stays open.

Protocol (frames of :mod:`detox.sandbox.inside.wire`, both directions): a 4-byte big-endian length, that
many bytes of a UTF-8 JSON object (the header), then ``header["size"]`` bytes of payload.

* Once LibreOffice answers, the host writes ``{"status": "ready", "version": ..., "size": 0}``.
* Request: ``{"op": "convert", "extension": "doc", "filters": [import filter names allowed],
  "max_pages": N, "size": len(document)}`` + the document.
* Reply: ``{"status": "ok", "filter": <import filter used>, "pages": N, "size": len(pdf)}`` + the PDF;
  ``{"status": "too-long", "pages": N}`` when the document lays out to more than ``max_pages`` pages
  (not exported); ``{"status": "refused", "detail": ...}`` when LibreOffice's type detection names a
  format that is not in ``filters`` (nothing was imported); ``{"status": "error", "detail": ...}`` when
  loading or export failed. Every reply carries ``cpu_s``: the most CPU time any process of the
  sandbox has used (RLIMIT_CPU is per process), so the parent can recycle the instance before that
  limit would kill it mid-document.
* stdin at EOF: LibreOffice is terminated and the host exits.

Loading is as passive as LibreOffice allows: the import filter is the one type detection found *and*
the request allows (a .doc that turns out to be, say, a Lotus or StarOffice file is not parsed by that
importer at all); Hidden, ReadOnly, MacroExecutionMode NEVER_EXECUTE, UpdateDocMode NO_UPDATE, no
interaction handler. The profile (:func:`profile_xcu`) disables macros outright (very high security,
DisableMacrosExecution), link updates in Writer and Calc, recalculation on load, Java, locking and
OpenCL. Export: PDF of at most ``max_pages + 1`` pages (the caller holds anything longer), without
bookmarks, comments, form fields or links to other files.

This file imports only the standard library and the framing at module level (``uno`` only inside
:class:`Office`), so it is importable without LibreOffice being installed. Run as a script, by a Python
that has no detox on its path, it loads the framing (``wire.py``, standard library only) from its own
directory by path. It trusts nothing it reads and enforces no limits itself: the parent applies rlimits
and timeouts and kills the whole sandbox.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _load_wire() -> Any:
    """The framing module next to this file, loaded by its path (no package to import it from)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "detox_office_host_wire", os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire.py")
    )
    if spec is None or spec.loader is None:
        raise ImportError("the framing module (wire.py) is not next to the LibreOffice host")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING or __package__:
    from detox.sandbox.inside import wire
else:  # run as a script: ``python3 -I -B office_host.py ...``
    wire = _load_wire()

_CONNECT_POLL_S = 0.05
_MAX_DETAIL = 300

# The PDF export filter for each kind of document LibreOffice opened, by the service it supports.
EXPORT_FILTERS = (
    ("com.sun.star.text.GenericTextDocument", "writer_pdf_Export"),
    ("com.sun.star.sheet.SpreadsheetDocument", "calc_pdf_Export"),
    ("com.sun.star.presentation.PresentationDocument", "impress_pdf_Export"),
    ("com.sun.star.drawing.DrawingDocument", "draw_pdf_Export"),
)

# registrymodifications.xcu entries: (path, property, type, value).
PROFILE_SETTINGS = (
    # Macros: never, whatever a document or its signature says; no prompt to block on either.
    ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "int", "3"),
    ("/org.openoffice.Office.Common/Security/Scripting", "DisableMacrosExecution", "boolean", "true"),
    ("/org.openoffice.Office.Common/Security/Scripting", "BlockUntrustedRefererLinks", "boolean", "true"),
    ("/org.openoffice.Office.Common/Security/Scripting", "WarnAlienFormat", "boolean", "false"),
    # Links are never updated on load: Writer 0 = never (sw's UpdateLinks), Calc 1 = never (0 = always).
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "int", "0"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "int", "1"),
    # Cached formula results are drawn as saved: nothing is recalculated on load (1 = never).
    ("/org.openoffice.Office.Calc/Formula/Load", "OOXMLRecalcMode", "int", "1"),
    ("/org.openoffice.Office.Calc/Formula/Load", "ODFRecalcMode", "int", "1"),
    ("/org.openoffice.Office.Java/VirtualMachine", "Enable", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "UseLocking", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "UseOpenCL", "boolean", "false"),
    ("/org.openoffice.Office.Common/Misc", "ShowTipOfTheDay", "boolean", "false"),
    ("/org.openoffice.Office.Common/Load", "ShowOfficeUpdateDialog", "boolean", "false"),
    ("/org.openoffice.Setup/Office", "ooSetupInstCompleted", "boolean", "true"),
    # Japanese documents without language tags get Japanese glyph forms and fonts.
    ("/org.openoffice.Setup/L10N", "ooSetupSystemLocale", "string", "ja-JP"),
    ("/org.openoffice.Office.Linguistic/General", "DefaultLocale_CJK", "string", "ja-JP"),
)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- the profile ---------------------------------------------------------------------------------


def profile_xcu() -> str:
    """registrymodifications.xcu of the throwaway profile (all values are our own constants)."""
    items = "\n".join(
        f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse">'
        f'<value xsi:type="xs:{kind}">{value}</value></prop></item>'
        for path, name, kind, value in PROFILE_SETTINGS
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
        'xmlns:xs="http://www.w3.org/2001/XMLSchema" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        f"{items}\n</oor:items>\n"
    )


def write_profile(directory: str) -> None:
    os.makedirs(os.path.join(directory, "user"), exist_ok=True)
    with open(os.path.join(directory, "user", "registrymodifications.xcu"), "w", encoding="utf-8") as f:
        f.write(profile_xcu())


# -- CPU accounting ------------------------------------------------------------------------------


def max_process_cpu_s() -> float:
    """The largest utime + stime of any process visible here (the sandbox's own PID namespace)."""
    ticks = os.sysconf("SC_CLK_TCK")
    most = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 12:
            most = max(most, int(fields[11]) + int(fields[12]))  # utime, stime (fields 14, 15)
    return most / ticks


# -- LibreOffice ---------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text[:_MAX_DETAIL]


class Office:
    """One headless LibreOffice and the UNO objects to drive it."""

    def __init__(self, soffice: str, base: str, pipe: str) -> None:
        import uno  # type: ignore[import-not-found]  # Debian's python3-uno, system Python only

        profile = os.path.join(base, "profile")
        self.work = os.path.join(base, "work")
        write_profile(profile)
        os.makedirs(self.work, exist_ok=True)
        self.process = subprocess.Popen(
            [
                soffice,
                "--headless",
                "--invisible",
                "--nologo",
                "--norestore",
                "--nodefault",
                "--nolockcheck",
                "--nofirststartwizard",
                f"-env:UserInstallation={uno.systemPathToFileUrl(profile)}",
                f"--accept=pipe,name={pipe};urp;StarOffice.ComponentContext",
            ],
            stdin=subprocess.DEVNULL,
            stdout=2,  # LibreOffice's chatter goes to stderr, never into the protocol
            stderr=2,
            cwd=self.work,
        )
        local = uno.getComponentContext()
        resolver = local.ServiceManager.createInstanceWithContext("com.sun.star.bridge.UnoUrlResolver", local)
        no_connect = uno.getClass("com.sun.star.connection.NoConnectException")
        url = f"uno:pipe,name={pipe};urp;StarOffice.ComponentContext"
        while True:  # the parent's start-up timeout bounds this loop
            try:
                self.context = resolver.resolve(url)
                break
            except no_connect:
                if self.process.poll() is not None:
                    raise RuntimeError(f"soffice exited with status {self.process.returncode}") from None
                time.sleep(_CONNECT_POLL_S)
        smgr = self.context.ServiceManager
        self.desktop = smgr.createInstanceWithContext("com.sun.star.frame.Desktop", self.context)
        self.detection = smgr.createInstanceWithContext("com.sun.star.document.TypeDetection", self.context)
        self.uno = uno
        self.count = 0

    def version(self) -> str:
        provider = self.context.ServiceManager.createInstanceWithContext(
            "com.sun.star.configuration.ConfigurationProvider", self.context
        )
        access = provider.createInstanceWithArguments(
            "com.sun.star.configuration.ConfigurationAccess",
            (self._prop("nodepath", "/org.openoffice.Setup/Product"),),
        )
        return str(access.getByName("ooSetupVersionAboutBox"))

    def _prop(self, name: str, value: Any) -> Any:
        prop = self.uno.createUnoStruct("com.sun.star.beans.PropertyValue")
        prop.Name = name
        prop.Value = value
        return prop

    def _import_filter(self, url: str) -> str:
        """The import filter LibreOffice's deep type detection picks for the file ("" when none)."""
        found = self.detection.queryTypeByDescriptor((self._prop("URL", url),), True)
        type_name = found[0] if isinstance(found, tuple) else found
        if not type_name:
            return ""
        for prop in self.detection.getByName(type_name):
            if prop.Name == "PreferredFilter":
                return str(prop.Value or "")
        return ""

    def convert(self, request: dict[str, Any], data: bytes) -> tuple[dict[str, Any], bytes]:
        extension = str(request.get("extension") or "bin")
        if not (extension.isascii() and extension.isalnum() and len(extension) <= 8):
            extension = "bin"
        allowed = request.get("filters")
        max_pages = request.get("max_pages")
        if not isinstance(allowed, list) or not isinstance(max_pages, int) or max_pages < 1:
            return {"status": "error", "detail": "malformed request"}, b""
        self.count += 1
        source = os.path.join(self.work, f"in-{self.count}.{extension}")
        target = os.path.join(self.work, f"out-{self.count}.pdf")
        with open(source, "wb") as f:
            f.write(data)
        try:
            source_url = self.uno.systemPathToFileUrl(source)
            filter_name = self._import_filter(source_url)
            if filter_name not in allowed:
                return {"status": "refused", "detail": f"detected as {filter_name or 'nothing'!r}"}, b""
            pages, pdf = self._load_and_export(
                source_url, self.uno.systemPathToFileUrl(target), filter_name, max_pages
            )
            if pages > max_pages:
                return {"status": "too-long", "pages": pages, "filter": filter_name}, b""
            return {"status": "ok", "filter": filter_name, "pages": pages}, pdf
        finally:
            for path in (source, target):
                if os.path.exists(path):
                    os.unlink(path)

    def _load_and_export(
        self, source_url: str, target_url: str, filter_name: str, max_pages: int
    ) -> tuple[int, bytes]:
        """(pages, PDF); no PDF when the document has more than ``max_pages`` pages."""
        from com.sun.star.document.MacroExecMode import NEVER_EXECUTE  # type: ignore[import-not-found]
        from com.sun.star.document.UpdateDocMode import NO_UPDATE  # type: ignore[import-not-found]

        doc = self.desktop.loadComponentFromURL(
            source_url,
            "_blank",
            0,
            (
                self._prop("Hidden", True),
                self._prop("ReadOnly", True),
                self._prop("FilterName", filter_name),
                self._prop("MacroExecutionMode", NEVER_EXECUTE),
                self._prop("UpdateDocMode", NO_UPDATE),
                self._prop("Silent", True),
            ),
        )
        if doc is None:
            raise RuntimeError("LibreOffice loaded nothing")
        try:
            export = next((f for service, f in EXPORT_FILTERS if doc.supportsService(service)), None)
            if export is None:
                raise RuntimeError("not a text, spreadsheet, presentation or drawing document")
            # Counted before the export, so an over-long document costs its layout but not its PDF.
            if export == "writer_pdf_Export":
                pages = int(doc.getCurrentController().PageCount)
            else:
                pages = int(doc.getRendererCount(doc, ()))
            if pages > max_pages:
                return pages, b""
            options = self.uno.Any(
                "[]com.sun.star.beans.PropertyValue",
                (
                    self._prop("PageRange", f"1-{max_pages + 1}"),
                    self._prop("ExportBookmarks", False),
                    self._prop("ExportNotes", False),
                    self._prop("ExportNotesPages", False),
                    self._prop("ExportFormFields", False),
                    self._prop("ExportLinksRelativeFsys", False),
                    self._prop("ConvertOOoTargetToPDFTarget", False),
                    self._prop("EmbedStandardFonts", False),
                ),
            )
            filter_data = self._prop("FilterData", options)
            self.uno.invoke(doc, "storeToURL", (target_url, (self._prop("FilterName", export), filter_data)))
        finally:
            doc.close(True)
        with open(self.uno.fileUrlToSystemPath(target_url), "rb") as f:
            return pages, f.read()

    def stop(self) -> None:
        # The bridge may die with LibreOffice before the call returns; the wait below decides.
        with contextlib.suppress(Exception):
            self.desktop.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def serve(soffice: str, base: str, pipe: str) -> int:
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print() or library write cannot corrupt the protocol
    office = Office(soffice, base, pipe)
    _write_all(out_fd, wire.encode_frame({"status": "ready", "version": office.version(), "cpu_s": 0.0}))
    stdin = sys.stdin.buffer
    try:
        while True:
            frame = wire.read_frame(stdin)
            if frame is None:
                return 0
            request, data = frame
            if request.get("op") != "convert":
                reply: dict[str, Any] = {"status": "error", "detail": "unknown op"}
                payload = b""
            else:
                try:
                    reply, payload = office.convert(request, data)
                except Exception as exc:  # noqa: BLE001 - reported; the parent restarts the instance
                    reply, payload = {"status": "error", "detail": _one_line(exc)}, b""
            reply["cpu_s"] = max_process_cpu_s()
            _write_all(out_fd, wire.encode_frame(reply, payload))
    finally:
        office.stop()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.stderr.write("usage: office_host.py SOFFICE BASE_DIR PIPE_NAME\n")
        sys.exit(2)
    sys.exit(serve(*sys.argv[1:]))
