"""Broker I/O. Only this package imports aiomqtt and aiokafka."""
