"""The bare Flask hello-world that the widget's requests/s are compared with."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello() -> str:
    return "Hello, World!"
