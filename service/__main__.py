"""``python -m service``: serve the API on SIBNN_HOST:SIBNN_PORT (127.0.0.1:8000 by default);
``python -m service migrate``: bring the database (SIBNN_DATABASE_URL) to the latest schema and exit."""
import sys

import uvicorn

from service.settings import Settings

if __name__ == "__main__":
    s = Settings()
    if sys.argv[1:] == ["migrate"]:
        from service.db import migrate

        migrate(s.db_url)
        print(f"database at {s.db_url.split('@')[-1]} is up to date")
    elif sys.argv[1:]:
        sys.exit(f"usage: python -m service [migrate] (got {' '.join(sys.argv[1:])})")
    else:
        uvicorn.run("service.app:app", host=s.host, port=s.port, log_level="info")
