#!/usr/bin/env python3
"""Container healthcheck: exit 0 when every URL given answers 200 within 5 s (stdlib only: the slim images have no
curl). Ray's /api/*healthz endpoints and MLflow's /health need no token."""
import sys
import urllib.request


def main(urls: list[str]) -> int:
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status != 200:
                    print(f"{url}: HTTP {r.status}", file=sys.stderr)
                    return 1
        except OSError as e:
            print(f"{url}: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
