"""Events in and out: parsing inbound notifications and CloudEvents, the reply events,
and the verification of an event sender's token."""
