//! Protocol parsers (filled by the network-spans work).
