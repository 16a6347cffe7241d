"""The function server and what it speaks: the ASGI server and its worker processes,
error and reply responses, and the wire formats (KServe V1, V2, TF-Serving, images)."""
