//! What every Countersign service binary shares: config, telemetry, health, shutdown.
