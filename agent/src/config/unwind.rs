//! `--unwinder` and `--unwind-tables-size`: how user stacks are walked.

use super::{CliOptions, ConfigError, FileOptions, invalid, size_option};
use crate::profiler::{DEFAULT_UNWIND_TABLES_BYTES, MAX_UNWIND_TABLES_BYTES, UnwinderMode};

/// Below this `--memory-limit`, `auto` means frame pointers: the unwinding maps (about 19 MiB)
/// would leave the agent's stages too little (at 128 MiB the other kernel maps and the baseline
/// take nearly everything).
pub const AUTO_MIN_MEMORY_LIMIT: u64 = 192 << 20;

/// The unwinder mode, if given (the caller picks by `--memory-limit` otherwise: see
/// [`AUTO_MIN_MEMORY_LIMIT`]), and the bytes its tables may take in the kernel.
pub(super) fn unwind_options(
    cli: &CliOptions,
    file: &FileOptions,
) -> Result<(Option<UnwinderMode>, u64), ConfigError> {
    let mode = match cli.unwinder.as_deref().or(file.unwinder.as_deref()) {
        None => None,
        Some(text) => Some(UnwinderMode::parse(text).ok_or_else(|| {
            invalid(
                "unwinder",
                format!("{text:?}: one of auto, dwarf, frame-pointers"),
            )
        })?),
    };
    let bytes = size_option(
        "unwind_tables_size",
        cli.unwind_tables_size.as_deref(),
        file.unwind_tables_size.clone(),
        DEFAULT_UNWIND_TABLES_BYTES,
    )?;
    if !(1 << 20..=MAX_UNWIND_TABLES_BYTES).contains(&bytes) {
        return Err(invalid(
            "unwind_tables_size",
            format!("{bytes}: must be between 1MiB and 256MiB"),
        ));
    }
    Ok((mode, bytes))
}
