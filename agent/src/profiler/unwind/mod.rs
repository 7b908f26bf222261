//! DWARF unwinding for processes built without frame pointers: unwind tables built from each
//! binary's `.eh_frame`/`.debug_frame` (`table`), placed in the kernel's shared row array and
//! listed per process, so the perf_event program can walk their user stacks.

pub mod table;
