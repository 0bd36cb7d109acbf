"""``python -m service``: serve the API on SIBNN_HOST:SIBNN_PORT (127.0.0.1:8000 by default)."""
import uvicorn

from service.settings import Settings

if __name__ == "__main__":
    s = Settings()
    uvicorn.run("service.app:app", host=s.host, port=s.port, log_level="info")
