"""The inference function: classify uploaded images with the live CNN.

parliament calls `main(context)` for every request; `service` (settings, storage and the model
registry, wired once at import) does the work. Served by `lepton serve infer`.
"""

from lepton_runtime.inference.service import InferenceService

service = InferenceService.from_env()


def main(context):
    """Answer one request: an image, a form, TF-Serving JSON or an S3 event."""
    return service.handle(context)
