"""The bare Flask hello-world that the widget's requests/s are compared with.

It answers every path, so that it can be driven with the very URLs the widget's loads
use (the load generator then does the same work for both).
"""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/")
@app.get("/<path:anything>")
def hello(anything: str = "") -> str:
    return "Hello, World!"
