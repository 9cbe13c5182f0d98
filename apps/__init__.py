"""The Gradio app (`studio app`): one file per tab under `apps/tabs/`."""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no network calls
