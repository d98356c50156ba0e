"""One contract suite for every transport: real brokers and the in-memory twin."""
