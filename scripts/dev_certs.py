"""Writes a development CA, service and client certificates and bearer tokens (see whisperlite/shell/dev_certs.py).

    .venv/bin/python scripts/dev_certs.py --out deploy/secrets --container-readable   # for docker-compose
"""

from whisperlite.shell.dev_certs import main

if __name__ == "__main__":
    main()
