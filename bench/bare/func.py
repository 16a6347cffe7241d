"""The framework's ceiling: a parliament function that answers a constant."""


def main(context):  # noqa: ANN001, ANN201 - parliament's contract
    return '{"predictions": []}', 200, {"Content-Type": "application/json"}
