"""Cloud tier: the round state machine and the service binding it to Kafka and the store."""
