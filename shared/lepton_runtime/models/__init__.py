"""The models bucket (layout, publishing, run claims) and the local model cache."""
