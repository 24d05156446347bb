"""`imgpipe-ingest`: parse settings, log as JSON, serve until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import sys

from imgpipe.common.config import process_env
from imgpipe.common.errors import SettingsError
from imgpipe.common.grpc_server import stop_event_on_signals
from imgpipe.common.logs import setup_logging
from imgpipe.ingest.app import IngestApp
from imgpipe.ingest.settings import Settings


async def serve(settings: Settings) -> None:
    app = IngestApp(settings)
    stop = stop_event_on_signals()
    await app.start()
    await stop.wait()
    await app.stop()


def main() -> None:
    try:
        settings = Settings.from_env(process_env())
    except SettingsError as exc:
        sys.exit(f"imgpipe-ingest: {exc}")
    setup_logging(settings.common.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
