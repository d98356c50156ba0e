"""Fog tier: the round state machine and the service binding it to MQTT and Kafka."""
