//! The event contract: typed CloudEvents on NATS JetStream, subjects, streams and consumers.
