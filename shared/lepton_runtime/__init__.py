"""lepton_runtime: what the functions share.

Settings, errors, events, storage, the HTTP protocol and the server; the inference and
training services. Depends on lepton_model, never the reverse.
"""
