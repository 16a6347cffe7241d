"""lepton_runtime: what the functions share (settings, errors, events, storage, HTTP protocol, server).

Depends on lepton_model, never the reverse."""
