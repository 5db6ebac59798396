"""``python -m llmgateway_server``."""

import sys

from llmgateway_server.cli import main

sys.exit(main())
