"""The framework's ceiling: a parliament function that answers a constant."""


def main(context):
    return '{"predictions": []}', 200, {"Content-Type": "application/json"}
