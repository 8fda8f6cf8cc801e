"""Start a shared MLflow tracking server on this machine (`make server`; docs/tracking-server.md).

The same command is installed as `pipeline-server`: the code is pipeline.cli.server.
"""

import sys

from pipeline.cli.server import main

if __name__ == "__main__":
    sys.exit(main())
