//! Socket capture: loading, attaching, reading the ring buffer (to be written).
