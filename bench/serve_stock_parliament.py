"""The framework's ceiling as a user of parliament gets it: `python -m parliament bench/bare`
(parliament's own app and waitress defaults, warning log per non-CloudEvent POST included),
on a port of our choosing instead of the hard-coded 8080.
Run: python bench/serve_stock_parliament.py PORT"""

import sys
from pathlib import Path

from parliament import server
from waitress import serve

if __name__ == "__main__":
    app = server.create(server.load(str(Path(__file__).parent / "bare")))
    serve(app, host="127.0.0.1", port=int(sys.argv[1]))
