//! capture-core

pub mod original_dst;

pub use original_dst::original_dst;
