//! Kernel struct offsets from BTF (to be written).
