//! Span builder (to be written).
