"""The training function: labelled datasets in, versioned models out.

parliament calls `main(context)` for every request; `service` (settings and storage, wired once
at import) does the work. Served by `lepton serve train`.
"""

from lepton_runtime.training.service import TrainingService

service = TrainingService.from_env()


def main(context):
    """Train on the dataset an S3 event or a JSON request names."""
    return service.handle(context)
