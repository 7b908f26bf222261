//! Sinks and wire clients.
