"""The deployables that are not functions: the event-source adapter (S3/MinIO
notifications to CloudEvents) and the dead-letter sink."""
