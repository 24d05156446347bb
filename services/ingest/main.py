"""`imgpipe-ingest`: parse settings, log as JSON, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import sys

from imgpipe.common.config import process_env
from imgpipe.common.errors import SettingsError
from imgpipe.common.logs import setup_logging
from imgpipe.common.service import run
from imgpipe.ingest.app import IngestApp
from imgpipe.ingest.settings import Settings


def main() -> None:
    try:
        settings = Settings.from_env(process_env())
    except SettingsError as exc:
        sys.exit(f"imgpipe-ingest: {exc}")
    setup_logging(settings.common.log_level)
    run(IngestApp(settings))


if __name__ == "__main__":
    main()
