"""The MLflow UI on our store: served in this process (`server`), in the model-training view
with each experiment's runs table as it should open (`view`)."""

from study.ui.server import (
    ALLOWED_HOSTS_ENV,
    ALLOWED_ORIGINS_ENV,
    allow_served_names,
    browse_url,
    serve_ui,
    served_names,
    server_env,
    this_machine,
)
from study.ui.view import (
    OUTCOME_COLUMNS,
    TABLE_TAG,
    VIEW_STORAGE_KEY,
    save_state,
    saved_states,
    study_state,
)

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "ALLOWED_ORIGINS_ENV",
    "OUTCOME_COLUMNS",
    "TABLE_TAG",
    "VIEW_STORAGE_KEY",
    "allow_served_names",
    "browse_url",
    "save_state",
    "saved_states",
    "serve_ui",
    "served_names",
    "server_env",
    "study_state",
    "this_machine",
]
