"""Export: the distilled model of either plan kind as a Triton model repository version
(``model_repository``), the bundle code Triton runs (``bundle``, ``triton_model/model.py``), and
the self-check against a real Triton (``self_check``)."""

from offline.export.model_repository import (DEFAULT_MODEL_NAME, DEFAULT_RANKING_MODEL_NAME, ExportError,
                                             default_model_name, export_model, export_untrained, render_config,
                                             synthetic_requests)
from offline.export.self_check import check_export, load_in_triton

__all__ = ["DEFAULT_MODEL_NAME", "DEFAULT_RANKING_MODEL_NAME", "ExportError", "check_export", "default_model_name",
           "export_model", "export_untrained", "load_in_triton", "render_config", "synthetic_requests"]
