"""The MLflow UI as ``harness ui`` serves it: MLflow's own server app, opening on model training.

MLflow 3's UI keeps the view it opens on (GenAI or model training) in the browser's local
storage and starts on GenAI, whatever the experiment's kind; every experiment link then leads to
a GenAI overview ("Traces 0"). This app is MLflow's, with one change: the page it serves sets
that preference to model training when the browser has none yet, so a first visit (and every
link from the experiment list) opens the runs and their charts. A user who switches to GenAI in
the UI keeps that choice. ``harness ui`` runs it as ``mlflow ui --app-name harness`` (the entry
point ``mlflow.app: harness`` in ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Any

from flask import request
from mlflow.server import app as flask_app
from mlflow.server.fastapi_app import app

WORKFLOW_KEY, MODEL_TRAINING = "mlflow.workflowType_v1", '"machine_learning"'
"""The local-storage entry MLflow's UI reads for its view, and the model-training value."""
DEFAULT_VIEW = (
    f"<script>try{{if(!localStorage.getItem('{WORKFLOW_KEY}'))"
    f"localStorage.setItem('{WORKFLOW_KEY}','{MODEL_TRAINING}')}}catch(e){{}}</script>"
)


@flask_app.after_request
def _open_on_model_training(response: Any) -> Any:
    """Add :data:`DEFAULT_VIEW` to the UI's page (``index.html``), before its own scripts."""
    if response.mimetype != "text/html" or request.path not in ("/", "/index.html"):
        return response
    response.direct_passthrough = False
    html = response.get_data(as_text=True)
    if "<head>" in html and WORKFLOW_KEY not in html:
        response.set_data(html.replace("<head>", "<head>" + DEFAULT_VIEW, 1))
    return response


__all__ = ["app"]
