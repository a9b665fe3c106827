"""Where the prediction records go, and how the spool before the store is kept.

``RecordsSettings.resolve`` is shared by the workers, the page, the records CLI and ``make status``;
the store's URL is worked out by ``records_url``. Per key: the archive's ``model-config.yaml``
(``handler:`` section, workers only), else the environment, else ``config.properties``, else the default:

- the store: ``records_url``, ``DEEPFAKE_RECORDS_URL``, ``deepfake_records_url``; SQLite in the run folder
- the spool's folder: ``records_spool``, ``DEEPFAKE_RECORDS_SPOOL``, ``deepfake_records_spool``;
  ``<run folder>/records-spool``
- its bound in MiB per store: ``records_spool_mb``, ``DEEPFAKE_RECORDS_SPOOL_MB``, ``deepfake_records_spool_mb``; 256
- days to keep rows: ``records_keep_days``, ``DEEPFAKE_RECORDS_KEEP_DAYS``, ``deepfake_records_keep_days``; for ever

``handler/server.py`` resolves them for its run folder and hands them to its workers as the
environment. ``off`` as the URL turns recording off; ``postgresql://`` uses the psycopg driver.
Ships inside the model archive.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from handler.records_store import RecordsError, normalise_url
from handler.spool import read_state
from runtime.handler_settings import DEFAULT_RECORDS_SPOOL_MB

logger = logging.getLogger(__name__)

STORE_FILE = "records.sqlite3"  # under the server's run folder by default
SPOOL_FOLDER = "records-spool"  # under the server's run folder by default
DEFAULT_SPOOL_MB = DEFAULT_RECORDS_SPOOL_MB  # about 550,000 rows (~490 bytes each): hours of traffic at tens of requests/s
OFF = ("off", "none", "false")


def setting(key: str, environ: Mapping[str, str] | None, properties: Mapping[str, str] | None = None,
            model_config: Mapping | None = None) -> str | None:
    """One records setting (``url``, ``spool``, ``spool_mb``, ``keep_days``), the first one set of: the
    archive's ``handler:`` section (``records_<key>``; workers only), the environment
    (``DEEPFAKE_RECORDS_<KEY>``), config.properties (``deepfake_records_<key>``); None if none is."""
    for source, name in ((model_config, f"records_{key}"), (environ, f"DEEPFAKE_RECORDS_{key.upper()}"),
                         (properties, f"deepfake_records_{key}")):  # fmt: skip
        value = str((source or {}).get(name) or "").strip()
        if value:
            return value
    return None


def records_url(
    environ: Mapping[str, str] | None,
    properties: Mapping[str, str] | None = None,
    run_dir: str | Path | None = None,
    model_config: Mapping | None = None,
) -> str | None:
    """The records store's URL, the one place it is worked out (the workers' recorder, the server and
    its ``make status``, the page and the records CLI all come here through ``RecordsSettings.resolve``).

    Precedence, the first one set wins:

    1. ``records_url`` in the archive's ``handler:`` section (``model_config``; workers only),
    2. the environment variable ``DEEPFAKE_RECORDS_URL``,
    3. ``deepfake_records_url`` in config.properties (``properties``),
    4. the default: SQLite ``records.sqlite3`` in the run folder (no run folder: None).

    ``off`` (or ``none``, ``false``) turns recording off: None."""
    url = setting("url", environ, properties, model_config)
    if url is None and run_dir:
        url = f"sqlite:///{Path(run_dir).resolve() / STORE_FILE}"
    return None if not url or url.lower() in OFF else url


@dataclass(frozen=True)
class RecordsSettings:
    """Where the records go and how the spool before the store is kept (this module's docstring has
    the table of names). ``url`` None: recording is off."""

    url: str | None
    spool_dir: Path
    spool_bytes: int = DEFAULT_SPOOL_MB * 2**20
    keep_days: float | None = None

    @classmethod
    def resolve(
        cls,
        environ: Mapping[str, str],
        properties: Mapping[str, str] | None = None,
        run_dir: str | Path | None = None,
        model_config: Mapping | None = None,
    ) -> "RecordsSettings":
        """Every records setting, each by ``setting``'s precedence; the URL by ``records_url``."""
        sources = (environ, properties, model_config)
        run_dir = Path(run_dir).resolve() if run_dir else None
        url = records_url(environ, properties, run_dir, model_config)
        spool = setting("spool", *sources) or (run_dir / SPOOL_FOLDER if run_dir else Path(tempfile.gettempdir()) / "deepfake-records-spool")
        try:
            spool_mb = float(setting("spool_mb", *sources) or DEFAULT_SPOOL_MB)
            keep_days = float(setting("keep_days", *sources)) if setting("keep_days", *sources) else None
        except ValueError as exc:
            raise RecordsError(f"records settings: {exc}") from None
        if spool_mb <= 0 or (keep_days is not None and keep_days <= 0):
            raise RecordsError("records settings: the spool size and keep-days must be positive")
        return cls(url, Path(spool), int(spool_mb * 2**20), keep_days)

    def _values(self) -> dict[str, str]:
        values = {"url": self.url or "off", "spool": str(self.spool_dir), "spool_mb": f"{self.spool_bytes / 2**20:g}"}
        return {**values, "keep_days": f"{self.keep_days:g}"} if self.keep_days else values

    def environ(self) -> dict[str, str]:
        """The settings as the environment a server hands its workers."""
        return {f"DEEPFAKE_RECORDS_{key.upper()}": value for key, value in self._values().items()}

    def properties(self) -> dict[str, str]:
        """The settings as config.properties keys (a server keeps them in its state file)."""
        return {f"deepfake_records_{key}": value for key, value in self._values().items()}


def spool_file(spool_dir: str | Path, url: str) -> Path:
    """One spool per store: rows of models recording to different stores never mix."""
    digest = hashlib.sha256(normalise_url(url).encode()).hexdigest()[:12]
    return Path(spool_dir) / f"records-spool-{digest}.sqlite3"


def spool_report(settings: RecordsSettings) -> dict:
    """What waits in a run's spools for their stores (``make status``; the CLI's notes)."""
    states = []
    for path in sorted(settings.spool_dir.glob("records-spool-*.sqlite3")):
        try:
            states.append(read_state(path))
        except sqlite3.Error as exc:  # a spool being created, or a broken one: say so, count the rest
            logger.warning("cannot read the spool %s: %s", path, exc)
    states = [s for s in states if s]
    return {"spool": str(settings.spool_dir), "rows": sum(s["rows"] for s in states), "bytes": sum(s["bytes"] for s in states),
            "max_bytes_per_store": settings.spool_bytes, "store_down": any(s["store_down"] for s in states),
            "stores": [s["store"] for s in states]}  # fmt: skip
