"""lepton_stack: the local serverless stack (`lepton up`) and the `lepton` CLI.

Development tooling on one machine: a moto S3+SQS endpoint, the event-source adapter, a
development router playing the Knative Broker, and the two function servers, supervised.
"""
